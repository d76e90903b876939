"""Which waiting task goes to which node: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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

    @property
    def capacity(self) -> int:
        """Slots the scheduler fills: halved per recent infrastructure failure, at least 1."""
        return max(1, self.slots >> max(0, self.penalty))

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.running) if self.usable else 0

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


def reservation_key(task: Task) -> tuple[int, float, str]:
    """The order waiting tasks are reserved and started in: highest priority, then oldest.

    The store's query for waiting tasks (db.tasks.waiting_tasks) sorts the same way.
    """
    return (-task.priority, task.created, task.id)


def to_reserve(tasks: Sequence[Task], nodes: Sequence[NodeView], count: int) -> list[Task]:
    """The first `count` tasks (already in priority order) that some usable node can run."""
    usable = [n for n in nodes if n.usable]
    chosen: list[Task] = []
    for task in tasks:
        if len(chosen) >= count:
            break
        if any(satisfies(task, node) for node in usable):
            chosen.append(task)
    return chosen


def pick(held: Sequence[Task], node: NodeView) -> int | None:
    """Index of the first held task `node` can run, or None."""
    for index, task in enumerate(held):
        if satisfies(task, node):
            return index
    return None


def fill_order(nodes: Sequence[NodeView], cursor: int = 0) -> list[NodeView]:
    """Free slots, one entry per slot, taken round robin over the nodes from `cursor` on:
    a burst of tasks is spread over the nodes instead of filling the first one."""
    count = len(nodes)
    rotated = [nodes[(cursor + i) % count] for i in range(count)]
    free = {n.address: n.free for n in rotated}
    order: list[NodeView] = []
    while any(free.values()):
        for node in rotated:
            if free[node.address] > 0:
                order.append(node)
                free[node.address] -= 1
    return order
