"""Reaching nodes: execnet specs from node addresses, probes, and connections to run tasks.

A node is `local` (a subprocess of the master) or `[user@]host[:port]`, reached over SSH with
execnet's ``ssh=`` gateway: batch mode (never a prompt), host keys checked (unknown ones
accepted on first use unless `strict`), one connection per node that every task reuses.
Per-node options (user, port, identity file, ssh_config file, remote Python, host key policy)
come from ``node_options``, the one place they are merged: the node's stored `ssh` options
(given to `dirt nodes add`) over its ``[nodes.hosts."ADDRESS"]`` table in dirt.toml over the
``[nodes]`` defaults; ``user@`` and ``:port`` in the address itself win over all three.

When a connection cannot be opened, execnet only says the gateway failed; ``diagnose`` runs
plain ``ssh`` with the same options to say why: no route, connection refused, auth refused,
no Python, Python too old.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

import execnet
from execnet import gateway_base, gateway_bootstrap, gateway_io
from execnet.xspec import XSpec

from dirt.blobs import BlobStore
from dirt.config import NodeDefaults
from dirt.dispatch.connection import NodeConnection, NodeLostError, Outcome, popen_spec
from dirt.dispatch.incoming import Limits, OnOutput
from dirt.documents import NodeAddress, parse_address
from dirt.errors import NodeError
from dirt.remote.protocol import python_too_old

# The per-node options a node may carry (stored in nodes.ssh, given to `dirt nodes add`).
SSH_OPTION_KEYS = ("user", "port", "identity_file", "ssh_config", "python", "host_key_checking")
HOST_KEY_POLICIES = {"accept-new": "accept-new", "strict": "yes", "no": "no"}


def node_options(
    defaults: NodeDefaults, ssh: Mapping[str, Any] | None = None, address: str | None = None
) -> NodeDefaults:
    """The options for one node, each from the first of: its own stored options (`ssh`, from
    the command line), dirt.toml's ``[nodes.hosts."ADDRESS"]`` table, the ``[nodes]`` defaults.
    """
    table = defaults.host(address).connection_options() if address is not None else {}
    own = {k: v for k, v in (ssh or {}).items() if k in SSH_OPTION_KEYS and v not in (None, "")}
    if "port" in own:
        own["port"] = int(own["port"])
    return dataclasses.replace(defaults, **{**table, **own})


def ssh_options(address: NodeAddress, options: NodeDefaults) -> list[str]:
    """The ssh command-line options for one node: batch mode, host key policy, user, port."""
    result = [
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={max(1, int(options.connect_timeout))}",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        f"StrictHostKeyChecking={HOST_KEY_POLICIES[options.host_key_checking]}",
    ]
    port = address.port or options.port or None
    if port:
        result += ["-p", str(port)]
    if options.identity_file:
        result += ["-i", os.path.expanduser(options.identity_file)]
    user = address.user or options.user or None
    if user:
        result += ["-l", user]
    return result


def remote_python(options: NodeDefaults) -> str:
    """The node's interpreter as a remote shell command (`setarch i686 python3` is allowed)."""
    try:
        words = shlex.split(options.python or "python3")
    except ValueError as exc:
        raise NodeError(f"python {options.python!r} does not parse: {exc}") from None
    return " ".join(shlex.quote(w) for w in words) or "python3"


def spec_for(address: NodeAddress, options: NodeDefaults) -> str:
    """The execnet spec that reaches `address`: a local process, or SSH."""
    if address.is_local:
        return popen_spec(sys.executable)
    parts = [*ssh_options(address, options), address.host]
    if any(c.isspace() for c in "".join(parts)):
        # execnet splits the ssh= value on whitespace and cannot quote.
        raise NodeError(f"node {address.text}: ssh options may not contain spaces: {parts}")
    spec = f"ssh={' '.join(parts)}//python={remote_python(options)}"
    if options.ssh_config:
        spec += f"//ssh_config={os.path.expanduser(options.ssh_config)}"
    return spec


def ssh_command(address: NodeAddress, options: NodeDefaults) -> list[str]:
    """The plain `ssh` command execnet runs for this node, minus the remote command."""
    command = ["ssh"]
    if options.ssh_config:
        command += ["-F", os.path.expanduser(options.ssh_config)]
    return [*command, *ssh_options(address, options), address.host]


def classify_ssh_error(stderr: str, address: NodeAddress, options: NodeDefaults) -> str:
    """A reason a user can act on, from what ssh printed when it could not log in."""
    text = stderr.strip()
    port = address.port or options.port or 22
    if "Permission denied" in text:
        return (
            "auth refused (Permission denied): check the user, the identity file "
            "and the node's authorized_keys"
        )
    if "Connection refused" in text:
        return f"connection refused: no sshd listening on port {port}"
    if "No route to host" in text or "Network is unreachable" in text:
        return "no route to host"
    if "timed out" in text:
        return "no route: connection timed out"
    if "Could not resolve hostname" in text or "Name or service not known" in text:
        return f"unknown host name {address.host!r}"
    if "Host key verification failed" in text or "IDENTIFICATION HAS CHANGED" in text:
        return (
            "host key verification failed: the node's key is unknown (strict checking) "
            "or changed; check it and fix known_hosts"
        )
    last = text.splitlines()[-1] if text else "ssh failed without a message"
    return f"ssh failed: {last}"


_VERSION = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")


def diagnose(address: str, options: NodeDefaults, timeout: float = 20) -> str | None:
    """Why `address` cannot run the agent, found with plain ssh; None when nothing is wrong."""
    parsed = parse_address(address)
    if parsed.is_local:
        return None
    base = ssh_command(parsed, options)
    try:
        login = subprocess.run(
            [*base, "true"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"no route: no answer within {timeout:g} s"
    except OSError as exc:
        return f"cannot run ssh: {exc}"
    if login.returncode != 0:
        return classify_ssh_error(login.stderr, parsed, options)
    python = remote_python(options)
    check = f"{python} -c 'import sys; print(tuple(sys.version_info[:2]))'"
    try:
        found = subprocess.run(
            [*base, check],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"{options.python} did not answer within {timeout:g} s"
    if found.returncode == 127 or "not found" in found.stderr or "No such file" in found.stderr:
        return f"no Python: {options.python!r} not found on the node (set it with --python)"
    match = _VERSION.search(found.stdout)
    if found.returncode != 0 or match is None:
        detail = (found.stderr.strip() or found.stdout.strip() or "no output").splitlines()[-1]
        return f"{options.python} does not run: {detail}"
    return python_too_old(options.python, (int(match.group(1)), int(match.group(2))))


class OwnSessionIO(gateway_io.Popen2IOMaster):
    """A gateway's subprocess (the local node's Python, or ssh) in a session of its own.

    A terminal's Ctrl-C signals its whole foreground process group: the node connections must
    not die with it, since the dispatcher it stops still needs them to let running tasks finish
    (see `Dispatcher.stop`).
    """

    def __init__(self, args: list[str], execmodel: Any) -> None:
        pipe = subprocess.PIPE
        self.popen = subprocess.Popen(args, stdout=pipe, stdin=pipe, start_new_session=True)
        gateway_base.Popen2IO.__init__(self, self.popen.stdin, self.popen.stdout, execmodel)


class ClosingGroup(execnet.Group):
    """An execnet Group whose gateway subprocesses run in a session of their own (see
    `OwnSessionIO`) and whose failed ssh gateways leave no open pipes or unreaped ssh.

    execnet's makegateway drops the ssh subprocess and its pipes when the login fails (and
    returns a dead gateway when the remote Python is missing); this closes them at once.
    """

    def makegateway(self, spec: Any = None) -> execnet.Gateway:
        spec = spec if isinstance(spec, XSpec) else XSpec(spec or self.defaultspec)
        if not (spec.ssh or spec.popen) or spec.via:
            return super().makegateway(spec)
        self.allocate_id(spec)
        if spec.execmodel is None:
            spec.execmodel = self.remote_execmodel.backend
        args = gateway_io.ssh_args(spec) if spec.ssh else gateway_io.popen_args(spec)
        io = OwnSessionIO(args, self.execmodel)
        if spec.ssh:
            io.remoteaddress = spec.ssh
        try:
            gw = gateway_bootstrap.bootstrap(io, spec)
            code = io.popen.poll()
            if code is not None:
                what = "ssh" if spec.ssh else "the node's Python"
                raise execnet.HostNotFound(f"{what} exited with code {code}")
        except BaseException:
            _close_popen(io.popen)
            raise
        gw.spec = spec
        self._register(gw)
        return gw


def _close_popen(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is None:
        popen.kill()
    popen.wait()
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            stream.close()


def connect(
    address: str,
    defaults: NodeDefaults,
    isolation: str,
    on_done: Callable[[Outcome], None],
    on_lost: Callable[[list[str], str], None],
    timeout: float = 30,
    ssh: Mapping[str, Any] | None = None,
    *,
    on_output: OnOutput | None = None,
    blobs: BlobStore | None = None,
    limits: Limits | None = None,
) -> NodeConnection:
    """An open connection to `address` with the agent running, or NodeError saying why not.

    Running tasks' output goes to `on_output`, their attachments into `blobs` (see
    ``NodeConnection``).

    `timeout` is meant for the [nodes] connect_timeout; a node whose own connect_timeout is
    longer gets the difference on top.
    """
    options = node_options(defaults, ssh, address)
    timeout += max(0.0, options.connect_timeout - defaults.connect_timeout)
    parsed = parse_address(address)
    spec = spec_for(parsed, options)
    connection = NodeConnection(
        spec,
        isolation,
        on_done,
        on_lost,
        group=ClosingGroup(),
        on_output=on_output,
        blobs=blobs,
        limits=limits,
    )
    try:
        connection.open(timeout=timeout)
    except NodeLostError as exc:
        why = None if parsed.is_local else diagnose(address, options, min(timeout, 20))
        raise NodeError(f"node {address}: {why or exc}") from None
    return connection


def probe(
    address: str,
    defaults: NodeDefaults,
    timeout: float = 30,
    ssh: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Connect to `address`, collect its sys_info, disconnect; NodeError says why not."""
    options = node_options(defaults, ssh, address)
    connection = connect(address, defaults, "thread", _ignore, _ignore, timeout, ssh)
    try:
        info = connection.sysinfo(timeout=timeout)
    except NodeLostError as exc:
        raise NodeError(f"node {address}: {exc}") from None
    finally:
        connection.close()
    version = tuple(info.get("version_info") or ())[:2]
    too_old = python_too_old(options.python, version) if version else None
    if too_old is not None:
        raise NodeError(f"node {address}: {too_old}")
    return info


def _ignore(*_args: Any) -> None:
    return None
