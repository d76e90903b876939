"""Which waiting task goes to which node: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    pulls: bool = False  # a pull-mode agent: it fetches its own work, no dispatcher drives it

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


def _named(nodes: Sequence[NodeView], limit: int = 3) -> str:
    shown = ", ".join(n.address for n in nodes[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")


def _nodes_are(nodes: Sequence[NodeView]) -> str:
    """ "node a is" or "nodes a, b are" """
    if len(nodes) == 1:
        return f"node {nodes[0].address} is"
    return f"nodes {_named(nodes)} are"


def unmet_reason(task: Task, nodes: Sequence[NodeView]) -> str | None:
    """Why no enabled node can run `task` at all; None when one can.

    A task only disabled nodes can run names them; otherwise the reason names the requirement
    (or platform) no enabled node meets and how many nodes were checked.
    """
    enabled = [n for n in nodes if n.enabled]
    if any(satisfies(task, n) for n in enabled):
        return None
    disabled = [n for n in nodes if not n.enabled and satisfies(task, n)]
    if disabled:
        return (
            f"its only matching {_nodes_are(disabled)} disabled: "
            f"`dirt nodes enable {disabled[0].address}`"
        )
    if not enabled:
        return "no enabled node: add one with `dirt nodes add HOST`"
    checked = f"{len(enabled)} node{'s' if len(enabled) != 1 else ''} checked"
    if task.platform and not any(
        requires.platform_matches(task.platform, n.sys_info) for n in enabled
    ):
        return f"no node has platform {task.platform}; {checked}"
    for requirement in _parsed(tuple(task.requires)):
        if not any(requirement.matches(n.sys_info) for n in enabled):
            return f"{requirement.unmet_reason()}; {checked}"
    return f"no single node meets all of {', '.join(task.requires)}; {checked}"


def node_reason(task: Task, nodes: Sequence[NodeView]) -> str | None:
    """Why the nodes that can run `task` take none now (offline, disabled, too loaded), named;
    None when one of them could (only a free slot is missing)."""
    matching = [n for n in nodes if satisfies(task, n)]
    enabled = [n for n in matching if n.enabled]
    online = [n for n in enabled if n.online]
    if not online:
        offline = [n for n in enabled if not n.online]
        disabled = [n for n in matching if not n.enabled]
        if offline and disabled:
            return (
                f"its only matching nodes are offline ({_named(offline)}) "
                f"or disabled ({_named(disabled)})"
            )
        if not offline:
            return unmet_reason(task, nodes)
        return f"its only matching {_nodes_are(offline)} offline"
    if not any(n.accepting for n in online):
        return f"the {len(enabled)} matching node(s) are too loaded"
    return None


def waiting_reason(task: Task, nodes: Sequence[NodeView]) -> str | None:
    """Why `task` cannot run on any node now, or None when only a free slot is missing."""
    return unmet_reason(task, nodes) or node_reason(task, nodes)


FAIR = "fair"
FIFO = "fifo"

Key = tuple[Any, ...]


def reservation_key(task: Task) -> Key:
    """fifo order: highest priority, then oldest, then id.

    The store's reads of waiting tasks (db.tasks.waiting_tasks) sort the same way, per order.
    """
    return (-task.priority, task.created, task.id)


def fair_key(task: Task) -> Key:
    """fair order: highest priority, then round, oldest record, oldest task of the record
    (see dirt.dispatch.order)."""
    return (-task.priority, task.turn, task.record_created, task.record_id, task.created, task.id)


def key_of(order: str) -> Callable[[Task], Key]:
    """The sort key of `order` ("fair" or "fifo")."""
    return fair_key if order == FAIR else reservation_key


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
