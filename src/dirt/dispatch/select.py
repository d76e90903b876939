"""Which waiting task goes to which node: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from dirt import requires
from dirt.models import Task


@dataclass
class NodeView:
    """What the scheduler knows of one node at this moment."""

    address: str
    sys_info: dict[str, Any]
    slots: int
    running: int = 0
    online: bool = True
    enabled: bool = True
    accepting: bool = True  # False when the load balancer says the node is too busy
    penalty: int = 0  # infrastructure failures lately: such a node gets fewer tasks
    reserved: int = 0  # tasks the dispatcher holds for this node, not yet started
    prefetch: int = 0  # how many tasks beyond its free slots the dispatcher may hold

    @property
    def capacity(self) -> int:
        """Slots the scheduler fills: halved per recent infrastructure failure, at least 1."""
        return max(1, self.slots >> max(0, self.penalty))

    @property
    def free(self) -> int:
        if not self.usable:
            return 0
        return max(0, self.capacity + self.prefetch - self.running - self.reserved)

    @property
    def usable(self) -> bool:
        return self.online and self.enabled and self.accepting


@lru_cache(maxsize=4096)
def _parsed(texts: tuple[str, ...]) -> tuple[requires.Requirement, ...]:
    return requires.parse_all(texts)


def satisfies(task: Task, node: NodeView) -> bool:
    if not requires.platform_matches(task.platform, node.sys_info):
        return False
    return all(r.matches(node.sys_info) for r in _parsed(tuple(task.requires)))


def waiting_reason(task: Task, nodes: Sequence[NodeView]) -> str | None:
    """Why `task` cannot run on any node now, or None when only a free slot is missing."""
    enabled = [n for n in nodes if n.enabled]
    if not enabled:
        return "no enabled node: add one with `dirt nodes add HOST`"
    matching = [n for n in enabled if satisfies(task, n)]
    checked = f"{len(enabled)} node{'s' if len(enabled) != 1 else ''} checked"
    if not matching:
        if task.platform and not any(
            requires.platform_matches(task.platform, n.sys_info) for n in enabled
        ):
            return f"no node has platform {task.platform}; {checked}"
        for requirement in _parsed(tuple(task.requires)):
            if not any(requirement.matches(n.sys_info) for n in enabled):
                return f"{requirement.unmet_reason()}; {checked}"
        return f"no single node meets all of {', '.join(task.requires)}; {checked}"
    if not any(n.online for n in matching):
        return f"the {len(matching)} matching node(s) are offline"
    if not any(n.accepting for n in matching if n.online):
        return f"the {len(matching)} matching node(s) are too loaded"
    return None


@dataclass
class Assignment:
    pairs: list[tuple[Task, str]] = field(default_factory=list)
    cursor: int = 0


def assign(tasks: Sequence[Task], nodes: Sequence[NodeView], cursor: int = 0) -> Assignment:
    """Pair tasks (already in priority order) with nodes that have a free slot, round robin.

    A node with infrastructure failures has fewer slots (see NodeView.capacity) and is passed
    over while an equally able node with fewer failures has room, so error-prone hosts get
    fewer tasks.
    """
    result = Assignment(cursor=cursor)
    if not nodes:
        return result
    free = {n.address: n.free for n in nodes}
    total = sum(free.values())
    count = len(nodes)
    for task in tasks:
        if total == 0:
            break
        best: int | None = None
        for step in range(count):
            index = (result.cursor + step) % count
            node = nodes[index]
            if free[node.address] <= 0 or not satisfies(task, node):
                continue
            if best is None or node.penalty < nodes[best].penalty:
                best = index
                if node.penalty == 0:
                    break
        if best is None:
            continue
        address = nodes[best].address
        result.pairs.append((task, address))
        free[address] -= 1
        total -= 1
        result.cursor = (best + 1) % count
    return result
