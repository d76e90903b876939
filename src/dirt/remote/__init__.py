"""Stdlib-only code shipped to nodes as source text (and importable here, for the master and tests).

A shipped program runs on a node under ``__name__ == "__channelexec__"`` after
``gateway.remote_exec(source(name))``, or as ``__main__`` (the fork server). Each is the text of
its parts, one after the other, as one module: ``agent`` (runs tasks), ``forkserver`` (started by
the agent for process isolation), ``sysinfo`` (describes the node), and ``http_agent``: the
pull-mode agent, the same parts plus its HTTP client, its jobs and their heartbeats, its loop
and its command line (``http_client``, ``http_job``, ``http_heartbeats``, ``http_agent``,
``http_main``), served to hosts as one file (``GET /agent.py``) and run as ``__main__``.
``protocol.py`` comes first in the two that speak it. A part imports what it needs from the
parts before it with ``from dirt.remote.PART import NAME, ...`` (which is how mypy, ruff and the
master see it); those imports are dropped from the shipped text, and ``from __future__ import
annotations`` is hoisted to its top.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

_HERE = Path(__file__).parent
FUTURE = "from __future__ import annotations"
# The agent that runs tasks, as shipped over execnet; the pull-mode agent adds to it.
AGENT_PARTS = (
    "protocol",
    "tasking",
    "streams",
    "task_pipes",
    "process_runner",
    "thread_runner",
    "agent",
)
PARTS = {
    "agent": AGENT_PARTS,
    "forkserver": ("protocol", "tasking", "streams", "forkserver"),
    "sysinfo": ("sysinfo",),
    # The pull-mode agent, served as one file at GET /agent.py (dirt.web.agent_api).
    "http_agent": (
        *AGENT_PARTS,
        "sysinfo",
        "http_client",
        "http_job",
        "http_heartbeats",
        "http_agent",
        "http_main",
    ),
}
SHIPPED = tuple(PARTS)


class ShippingError(Exception):
    """A shipped program cannot be put together from its parts (a bug in dirt itself)."""


@functools.cache
def source(name: str) -> str:
    """The source text of the shipped program `name` (e.g. ``"agent"``)."""
    if name not in PARTS:
        raise ValueError(f"no shipped module {name!r}; known: {', '.join(SHIPPED)}")
    return assemble(PARTS[name])


def assemble(parts: tuple[str, ...], folder: Path = _HERE) -> str:
    """One program of the modules `parts` (names of files in `folder`), in that order."""
    defined: dict[str, str] = {}
    texts = [FUTURE]
    for index, part in enumerate(parts):
        text = (folder / f"{part}.py").read_text(encoding="utf-8")
        texts.append(_part_text(part, text, parts[:index], defined))
    return "\n\n".join(texts) + "\n"


def _part_text(part: str, text: str, before: tuple[str, ...], defined: dict[str, str]) -> str:
    """`text` without its future import and its imports of earlier parts."""
    tree = ast.parse(text)
    lines = text.splitlines()
    drop: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            drop.update(range(node.lineno - 1, node.end_lineno or node.lineno))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dirt"):
            _check_sibling_import(part, node, before, defined)
            drop.update(range(node.lineno - 1, node.end_lineno or node.lineno))
        for name in _top_level_names(node):
            if defined.setdefault(name, part) != part:
                raise ShippingError(f"{part}.py redefines {name!r} of {defined[name]}.py")
    return "\n".join(line for number, line in enumerate(lines) if number not in drop)


def _check_sibling_import(
    part: str, node: ast.ImportFrom, before: tuple[str, ...], defined: dict[str, str]
) -> None:
    source_part = (node.module or "").rpartition(".")[2]
    if node.module != f"dirt.remote.{source_part}" or source_part not in before:
        raise ShippingError(
            f"{part}.py imports from {node.module}: a shipped part may import only from the "
            f"parts shipped before it ({', '.join(before) or 'none'})"
        )
    for alias in node.names:
        if alias.asname is not None or defined.get(alias.name) != source_part:
            raise ShippingError(
                f"{part}.py: 'from {node.module} import {alias.name}"
                f"{' as ' + alias.asname if alias.asname else ''}' does not name a top-level "
                f"definition of {source_part}.py under its own name"
            )


def _top_level_names(node: ast.stmt) -> list[str]:
    """Names a top-level statement binds that a later part could clash with (also inside an
    ``if``, such as ``if TYPE_CHECKING: ... else: ...``)."""
    if isinstance(node, ast.If):
        return [name for sub in (*node.body, *node.orelse) for name in _top_level_names(sub)]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    names = []
    for target in targets:
        for sub in ast.walk(target):
            if isinstance(sub, ast.Name):
                names.append(sub.id)
    return names
