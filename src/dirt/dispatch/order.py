"""The order waiting tasks start in: pure functions, no I/O.

Two orders (`[dispatch] order`); higher priority wins in both:

- fifo: oldest task first (`created`, then id).
- fair (the default): within a priority, records take turns. Each waiting task carries a
  `turn`: the round in which its record takes it. Round n holds the n-th task of every record
  with waiting tasks (its `share` tasks, for a record with a share), so sorting by (turn,
  record's created, record id, created, id) is round robin over the records, oldest record first
  within a round. A record's share of the slots does not depend on how many tasks it queued.

Turns are given when a task joins the queue (submitted, or retried), never while it is picked,
so picking stays one keyset read of an index in this order (db.tasks.waiting_tasks), however
long the queue. A record's tasks continue its own sequence when it still has tasks waiting at
that priority; otherwise, and at least, they join where the queue stands now: the lowest turn
among the tasks the dispatcher is about to start on the nodes that can run them (its "heads",
published in the store), so a record submitted after a long one neither waits behind it nor
jumps the rounds it already served. A node's head is its own, so a slow class of nodes (one
GPU host) does not hold back newcomers on the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dirt.dispatch.select import NodeView, satisfies
from dirt.models import Task

# ---- giving turns ----------------------------------------------------------------------------


@dataclass
class Lane:
    """A record's turn sequence at one priority, as the store holds it."""

    share: int
    # The slot its next task takes, when it still has tasks waiting at this priority; None
    # when it has none (its next task joins where the queue stands).
    next_slot: int | None = None


def allocate_turns(
    tasks: Sequence[Task],
    lanes: Mapping[tuple[str, int], Lane],
    frontier: Callable[[Task], int],
) -> dict[tuple[str, int], int]:
    """Give each task (joining the queue) its turn; returns each lane's next slot.

    A record with share s takes s slots per round: slot n is in round n // s. Its tasks take
    slots in their own order (oldest first), from its next slot, but never before the round
    where the queue stands for them (`frontier`).
    """
    lanes_of: dict[tuple[str, int], list[Task]] = {}
    for task in tasks:
        lanes_of.setdefault((task.record_id, task.priority), []).append(task)
    ends: dict[tuple[str, int], int] = {}
    for key, members in lanes_of.items():
        lane = lanes[key]
        slot = lane.next_slot
        for task in sorted(members, key=lambda t: (t.created, t.id)):
            floor = frontier(task) * lane.share
            slot = floor if slot is None else max(slot, floor)
            task.turn = slot // lane.share
            slot += 1
        assert slot is not None  # every lane has a task
        ends[key] = slot
    return ends


Heads = dict[str, dict[int, int]]
"""address -> priority -> the lowest turn among the tasks at hand that the node can run."""


def heads(tasks: Iterable[Task], nodes: Sequence[NodeView]) -> Heads:
    """Where each node's queue stands: per node and priority, the lowest turn among `tasks`
    (those held and those next in line) that the node can run, whether or not it is free."""
    lowest: dict[tuple[tuple[str, ...], str | None, int], int] = {}
    sample: dict[tuple[tuple[str, ...], str | None], Task] = {}
    for task in tasks:
        group = (tuple(task.requires), task.platform)
        sample.setdefault(group, task)
        key = (*group, task.priority)
        if key not in lowest or task.turn < lowest[key]:
            lowest[key] = task.turn
    found: Heads = {}
    for node in nodes:
        runs = {g for g, task in sample.items() if satisfies(task, node)}
        for (req, platform, priority), turn in lowest.items():
            if (req, platform) in runs:
                mine = found.setdefault(node.address, {})
                mine[priority] = min(turn, mine.get(priority, turn))
    return found


def frontier_of(
    published: Heads,
    sys_infos: Mapping[str, dict[str, Any]],
    fallback: Callable[[int], int],
) -> Callable[[Task], int]:
    """The round a task joining the queue starts at: the furthest head among the nodes that
    can run it (so it lines up with the records served there now), else `fallback(priority)`
    (no dispatcher has tasks at hand for those nodes: the queue's first turn, or 0)."""
    cache: dict[tuple[tuple[str, ...], str | None, int], int] = {}
    views = [
        NodeView(address=a, sys_info=sys_infos[a], slots=1) for a in published if a in sys_infos
    ]

    def frontier(task: Task) -> int:
        key = (tuple(task.requires), task.platform, task.priority)
        if key not in cache:
            found = [
                published[v.address][task.priority]
                for v in views
                if task.priority in published[v.address] and satisfies(task, v)
            ]
            cache[key] = max(found) if found else fallback(task.priority)
        return cache[key]

    return frontier
