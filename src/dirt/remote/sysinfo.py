"""Probe shipped to a node with ``gateway.remote_exec``: sends one dict describing the node.

Stdlib only, no imports of dirt (see ``dirt.remote.source``). The keys of the original dirt are
kept (cpu_count, platform, architecture, environ, path, version_info, pythonpath, hostname,
fqdn, ip) and a few added.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

NAME_LOOKUP_TIMEOUT = 2.0


def bounded(func: Callable[[], T], fallback: T, timeout: float = NAME_LOOKUP_TIMEOUT) -> T:
    """func() or fallback if it raises or takes longer than timeout.

    Name lookups can block for tens of seconds on a node with broken DNS; the probe must not.
    """
    box: list[T] = []

    def target() -> None:
        with contextlib.suppress(Exception):
            box.append(func())

    thread = threading.Thread(target=target, name="dirt-sysinfo-lookup")
    thread.daemon = True
    thread.start()
    thread.join(timeout)
    return box[0] if box else fallback


def memory_total() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def load() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


def collect() -> dict[str, Any]:
    hostname = socket.gethostname()
    return {
        "cpu_count": os.cpu_count(),
        "platform": sys.platform,
        "architecture": platform.machine(),
        "environ": dict(os.environ),
        "path": [p for p in os.environ.get("PATH", "").split(os.pathsep) if p],
        "version_info": list(sys.version_info),
        "pythonpath": list(sys.path),
        "hostname": hostname,
        "fqdn": bounded(socket.getfqdn, hostname),
        "ip": bounded(lambda: socket.gethostbyname(hostname), "127.0.0.1"),
        "system": platform.system(),
        "release": platform.release(),
        "python": sys.executable,
        "python_version": platform.python_version(),
        "memory_total": memory_total(),
        "load": load(),
    }


if __name__ == "__channelexec__":
    channel.send(collect())  # type: ignore[name-defined]  # noqa: F821
