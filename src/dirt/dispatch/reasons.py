"""Why a waiting task waits: pure functions over a snapshot of the queue, no I/O.

Reasons are worked out when they are read (`dirt status`, the record page, the API), never
stored per task: a million waiting tasks would need a million writes whenever a node or the
queue changes, and a stored reason goes stale the moment it stops being true. What a reason
needs is small and current: the nodes (the store), what the running dispatchers announce
(models.DispatcherInfo: heartbeat, order, each node's connection, load and slots), and where
the task stands in the queue (a bounded keyset read of the order's index, `Situation.ahead`).

The first check that applies gives the reason (`CHECKS`, in order). A check for something that
holds a task back before the queue even considers it (a retry backoff, a dependency on another
task) goes first, when dirt has one; it reads the task's own fields, where the checks here depend
only on the task's requirement group (`Situation.of_group`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dirt.dispatch.select import NodeView, node_reason, satisfies, unmet_reason
from dirt.models import DispatcherInfo, Node, NodeKind, Task

# A dispatcher writes its heartbeat at least every HEARTBEAT_S; one not seen for STALE_AFTER_S
# is not running (it died, or its host or the store is unreachable from it).
HEARTBEAT_S = 2.0
STALE_AFTER_S = 15.0
# Tasks ahead are counted exactly up to this many; beyond, the reason says "more than".
AHEAD_CAP = 1000

Ahead = tuple[int | None, int]
"""(tasks ahead at the task's priority, None when more than AHEAD_CAP; tasks waiting at a
higher priority, counted up to AHEAD_CAP)."""


@dataclass
class Situation:
    """What readers know when they explain waiting tasks: one snapshot per request."""

    now: float
    dispatchers: list[DispatcherInfo]
    nodes: list[NodeView]
    ahead: Callable[[Task], Ahead]
    live: list[DispatcherInfo] = field(init=False)
    # What depends only on a task's requirements and platform, worked out once per group: a
    # record's thousands of tasks mostly share one.
    _groups: dict[tuple[tuple[str, ...], str | None], dict[str, str | None]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self.live = [d for d in self.dispatchers if d.alive(self.now, STALE_AFTER_S)]

    def of_group(self, task: Task, what: str, work: Callable[[], str | None]) -> str | None:
        """`work()` for `task`'s requirement group, computed once per group and `what`."""
        group = self._groups.setdefault((tuple(task.requires), task.platform), {})
        if what not in group:
            group[what] = work()
        return group[what]


def node_views(
    nodes: Sequence[Node],
    dispatchers: Sequence[DispatcherInfo],
    agent_jobs: Mapping[str, int] | None = None,
) -> list[NodeView]:
    """The store's nodes as the live dispatchers see them (connection, load, slots in use); a
    node no live dispatcher has reported on yet counts as the store last saw it. An agent node
    is as the store has it, with `agent_jobs[name]` running."""
    runtime = {a: n for d in reversed(dispatchers) for a, n in d.nodes.items()}
    views = []
    for node in nodes:
        if node.kind is NodeKind.AGENT:
            views.append(
                NodeView(
                    node.address,
                    node.sys_info,
                    node.slots,
                    running=(agent_jobs or {}).get(node.address, 0),
                    online=node.online,
                    enabled=node.enabled,
                    penalty=node.penalty,
                    pulls=True,
                )
            )
            continue
        seen = runtime.get(node.address)
        views.append(
            NodeView(
                node.address,
                node.sys_info,
                node.slots if seen is None else seen.capacity,
                running=0 if seen is None else seen.running,
                online=node.online if seen is None else seen.online,
                enabled=node.enabled,
                accepting=True if seen is None else seen.accepting,
            )
        )
    return views


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _requirements(task: Task, s: Situation) -> str | None:
    return s.of_group(task, "unmet", lambda: unmet_reason(task, s.nodes))


def no_dispatcher(dispatchers: Sequence[DispatcherInfo], now: float) -> str | None:
    """ "no dispatcher is running (...)" when none is; None when one is."""
    if any(d.alive(now, STALE_AFTER_S) for d in dispatchers):
        return None
    if not dispatchers:
        since = "none has run on this store yet"
    else:
        since = f"none seen for {_duration(now - max(d.last_seen for d in dispatchers))}"
    return f"no dispatcher is running ({since}): start one with `dirt serve`"


def _dispatcher(task: Task, s: Situation) -> str | None:
    if s.live or s.of_group(task, "agent", lambda: _agent_can(task, s)):
        return None
    return no_dispatcher(s.dispatchers, s.now)


def _agent_can(task: Task, s: Situation) -> str | None:
    """ "yes" when an online pull-mode agent can run `task`: it needs no dispatcher."""
    return "yes" if any(n.pulls and n.usable and satisfies(task, n) for n in s.nodes) else None


def _nodes(task: Task, s: Situation) -> str | None:
    return s.of_group(task, "nodes", lambda: node_reason(task, s.nodes))


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _queued(task: Task, s: Situation) -> str:
    at_priority, higher = s.ahead(task)
    if at_priority is None:
        ahead = f"more than {_count(AHEAD_CAP, 'task')} ahead"
    elif at_priority == 0:
        ahead = "next in line" if not higher else "first at its priority"
    else:
        ahead = f"{_count(at_priority, 'task')} ahead"
    if higher:
        many = f"more than {AHEAD_CAP:,}" if higher >= AHEAD_CAP else f"{higher:,}"
        ahead += f" (and {many} of higher priority)"
    return f"queued: {ahead}; {s.of_group(task, 'slots', lambda: _slots(task, s))}"


def _slots(task: Task, s: Situation) -> str:
    usable = [n for n in s.nodes if n.usable and satisfies(task, n)]
    capacity = sum(n.capacity for n in usable)
    busy = min(capacity, sum(n.running for n in usable))
    if len(usable) == 1:
        where = f"its matching node {usable[0].address}"
        slots = (
            f"{where} is busy: {busy}/{capacity} slots"
            if busy >= capacity
            else f"{busy}/{capacity} slots busy on {where}"
        )
    elif busy >= capacity:
        slots = f"all {len(usable)} matching nodes busy: {busy}/{capacity} slots"
    else:
        slots = f"{busy}/{capacity} slots busy on its {len(usable)} matching nodes"
    return slots


CHECKS: tuple[Callable[[Task, Situation], str | None], ...] = (
    _requirements,
    _dispatcher,
    _nodes,
)


def explain(task: Task, situation: Situation) -> str:
    """Why `task` (waiting) waits, as one line."""
    for check in CHECKS:
        reason = check(task, situation)
        if reason is not None:
            return reason
    return _queued(task, situation)
