"""Stdlib-only modules shipped to nodes as source text (never imported there).

Each module here runs on a node under ``__name__ == "__channelexec__"`` after
``gateway.remote_exec(source)``: ``agent`` (runs tasks), ``forkserver`` (started by the agent for
process isolation), ``sysinfo`` (describes the node), ``probe_load`` (load average).
"""

from pathlib import Path

_HERE = Path(__file__).parent
SHIPPED = ("agent", "forkserver", "sysinfo", "probe_load")


def source(name: str) -> str:
    """The source text of the shipped module `name` (e.g. ``"agent"``)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped module {name!r}; known: {', '.join(SHIPPED)}")
    return (_HERE / f"{name}.py").read_text(encoding="utf-8")
