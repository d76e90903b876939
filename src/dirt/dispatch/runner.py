"""Reaching nodes: execnet specs from node addresses, probes, and connections to run tasks."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

from dirt.config import NodeDefaults
from dirt.dispatch.connection import NodeConnection, NodeLostError, Outcome, popen_spec
from dirt.documents import NodeAddress, parse_address
from dirt.errors import NodeError


def ssh_options(address: NodeAddress, defaults: NodeDefaults) -> list[str]:
    """The ssh command-line options for one node: batch mode, host key policy, user, port."""
    options = [
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={int(defaults.connect_timeout)}",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
    ]
    checking = {"accept-new": "accept-new", "strict": "yes", "no": "no"}
    options += ["-o", f"StrictHostKeyChecking={checking[defaults.host_key_checking]}"]
    port = address.port or defaults.port or None
    if port:
        options += ["-p", str(port)]
    if defaults.identity_file:
        options += ["-i", os.path.expanduser(defaults.identity_file)]
    user = address.user or defaults.user or None
    if user:
        options += ["-l", user]
    return options


def spec_for(address: NodeAddress, defaults: NodeDefaults) -> str:
    """The execnet spec that reaches `address`: a local process, or SSH."""
    if address.is_local:
        return popen_spec(sys.executable)
    parts = [*ssh_options(address, defaults), address.host]
    if any(c.isspace() for c in "".join(parts)):
        # execnet splits the ssh= value on whitespace and cannot quote.
        raise NodeError(f"node {address.text}: ssh options may not contain spaces: {parts}")
    spec = f"ssh={' '.join(parts)}//python={shlex.quote(defaults.python)}"
    if defaults.ssh_config:
        spec += f"//ssh_config={os.path.expanduser(defaults.ssh_config)}"
    return spec


def connect(
    address: str,
    defaults: NodeDefaults,
    isolation: str,
    on_done: Callable[[Outcome], None],
    on_lost: Callable[[list[str], str], None],
    timeout: float = 30,
) -> NodeConnection:
    """An open connection to `address` with the agent running, or NodeError saying why not."""
    spec = spec_for(parse_address(address), defaults)
    connection = NodeConnection(spec, isolation, on_done, on_lost)
    try:
        connection.open(timeout=timeout)
    except NodeLostError as exc:
        raise NodeError(f"node {address}: {exc}") from None
    return connection


def probe(address: str, defaults: NodeDefaults, timeout: float = 30) -> dict[str, Any]:
    """Connect to `address`, collect its sys_info, disconnect."""
    connection = connect(address, defaults, "thread", _ignore, _ignore, timeout)
    try:
        return connection.sysinfo(timeout=timeout)
    except NodeLostError as exc:
        raise NodeError(f"node {address}: {exc}") from None
    finally:
        connection.close()


def _ignore(*_args: Any) -> None:
    return None
