"""Real SSH hosts for the tests: an sshd per network namespace, or per loopback port.

Each test gets its own fleet (keys generated per run, in its tmp_path); teardown kills the
servers and every process they started, and deletes the namespaces and veths, even when the
test failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dirt.dispatch.runner import probe
from dirt.service import Service
from tests.conftest import need
from tests.ssh.sshd import Fleet, namespaces_possible, sshd_available

_seen: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _seen:
        return
    if "isolated" in _seen:
        terminalreporter.write_line("ssh tests: each host had its own network namespace")
    else:
        terminalreporter.write_line(
            "ssh tests: FALLBACK, no network namespaces "
            f"({_seen.get('why', '?')}): hosts were sshd ports on 127.0.0.1",
            yellow=True,
        )


@pytest.fixture(scope="session")
def namespaces() -> tuple[bool, str]:
    return namespaces_possible()


@pytest.fixture
def fleet(tmp_path: Path, namespaces: tuple[bool, str]) -> Iterator[Fleet]:
    """Two SSH hosts, node-a and node-b (ssh_config aliases); more with fleet.add(name)."""
    need(sshd_available(), "sshd (openssh-server)")
    hosts = Fleet(tmp_path / "ssh", use_namespaces=namespaces[0])
    if hosts.isolated:
        _seen["isolated"] = "yes"
    else:
        _seen["why"] = namespaces[1] or hosts.why_not_isolated
    try:
        hosts.add("node-a")
        hosts.add("node-b")
        yield hosts
    finally:
        hosts.close()


@pytest.fixture
def settings_overrides(fleet: Fleet) -> dict[str, dict[str, Any]]:
    return {
        "dispatch": {"poll_interval": 0.02, "backoff_initial": 0.2, "backoff_max": 1.0},
        "nodes": {"ssh_config": str(fleet.keys.ssh_config), "connect_timeout": 3.0},
        "log": {"file": ""},
    }


def add_node(service: Service, address: str, slots: int = 2, **ssh: Any) -> dict[str, Any]:
    """Probe `address` over SSH for real and store it as a node; returns its sys_info."""
    info = probe(address, service.settings.nodes, 30, ssh)
    service.save_node(address, info, slots=slots, ssh=ssh or None)
    return info
