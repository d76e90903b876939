"""Node addresses: `local` (or `local-N`), `[user@]host[:port]`, or a batch node
`slurm:PARTITION[@LOGIN_HOST]`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dirt.errors import InputError


@dataclass(frozen=True)
class NodeAddress:
    """How to reach a node: `local` or `[user@]host[:port]` (an ssh_config alias counts)."""

    text: str
    host: str
    user: str | None = None
    port: int | None = None

    @property
    def is_local(self) -> bool:
        """A subprocess of the master, no SSH: `local`, `localhost`, or `local-N` (N a number:
        more local nodes, for example one per dispatcher of a test or a benchmark)."""
        local = self.host in LOCAL_HOSTS or _NUMBERED_LOCAL.fullmatch(self.host) is not None
        return local and self.user is None and self.port is None


LOCAL_HOSTS = frozenset({"local", "localhost"})
_NUMBERED_LOCAL = re.compile(r"local-[0-9]+")


def parse_address(text: Any) -> NodeAddress:
    """Parse `[user@]host[:port]`, or raise InputError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"node address {text!r} is empty")
    text = text.strip()
    user, _, hostport = text.rpartition("@")
    host, port_text = hostport, ""
    if hostport.startswith("["):  # [::1]:2222
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    problems = []
    if "@" in user or (user and not all(c.isalnum() or c in "._-" for c in user)):
        problems.append(f"node address {text!r}: user {user!r} is not a plain user name")
    if not host or any(c.isspace() or c in "/\\@" for c in host):
        problems.append(f"node address {text!r}: {host!r} is not a host name")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            problems.append(f"node address {text!r}: port {port_text!r} is not 1-65535")
        else:
            port = int(port_text)
    if problems:
        raise InputError("; ".join(problems))
    return NodeAddress(text=text, host=host, user=user or None, port=port)


BATCH_SYSTEMS = ("slurm",)  # `htcondor:POOL` is designed in docs/batch.md, not built
_PARTITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class BatchAddress:
    """A batch node: `slurm:PARTITION` (Slurm's commands run here) or
    `slurm:PARTITION@LOGIN_HOST` (they run on the login host over SSH, `[user@]host[:port]`)."""

    text: str
    system: str
    partition: str
    login: NodeAddress | None = None


def is_batch_address(text: Any) -> bool:
    """Whether `text` names a batch node (`slurm:...`, `htcondor:...`), valid or not."""
    if not isinstance(text, str):
        return False
    system, colon, _ = text.strip().partition(":")
    return bool(colon) and system in (*BATCH_SYSTEMS, "htcondor")


def parse_batch_address(text: Any) -> BatchAddress:
    """Parse `slurm:PARTITION[@LOGIN_HOST]`, or raise InputError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"batch node address {text!r} is empty")
    text = text.strip()
    system, _, rest = text.partition(":")
    if system == "htcondor":
        raise InputError(
            f"{text!r}: HTCondor nodes are designed (docs/batch.md) but not built yet; "
            "this dirt drives Slurm: slurm:PARTITION[@LOGIN_HOST]"
        )
    if system not in BATCH_SYSTEMS:
        raise InputError(f"{text!r}: a batch node address is slurm:PARTITION[@LOGIN_HOST]")
    partition, at, login_text = rest.partition("@")
    problems = []
    if not _PARTITION.fullmatch(partition):
        problems.append(
            f"{text!r}: {partition!r} is not a partition name (letters, digits, ._-; "
            "see `sinfo -s`)"
        )
    login = None
    if at:
        try:
            login = parse_address(login_text)
        except InputError as exc:
            problems.append(f"{text!r}: login host: {exc}")
    if problems:
        raise InputError("; ".join(problems))
    return BatchAddress(text=text, system=system, partition=partition, login=login)
