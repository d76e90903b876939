"""Stdlib-only modules shipped to nodes as source text (never imported there).

Each module here runs on a node under ``__name__ == "__channelexec__"`` after
``gateway.remote_exec(source)``: ``agent`` (runs tasks), ``forkserver`` (started by the agent for
process isolation), ``sysinfo`` (describes the node), ``probe_load`` (load average).
"""

from pathlib import Path

_HERE = Path(__file__).parent
SHIPPED = ("agent", "forkserver", "sysinfo", "probe_load")
# Shipped in front of these modules' own source: the task-running code both need.
WITH_TASKING = ("agent", "forkserver")


def source(name: str) -> str:
    """The source text of the shipped module `name` (e.g. ``"agent"``)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped module {name!r}; known: {', '.join(SHIPPED)}")
    text = (_HERE / f"{name}.py").read_text(encoding="utf-8")
    if name in WITH_TASKING:
        text = (_HERE / "tasking.py").read_text(encoding="utf-8") + "\n\n" + text
    return text
