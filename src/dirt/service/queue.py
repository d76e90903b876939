"""The queue: turns for tasks joining it, why each waiting task waits, and the per-record view
(`dirt queue`, /queue). See dirt.dispatch.order for the order, dirt.dispatch.reasons for the
reasons."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from dirt.db import agents as agents_db
from dirt.db import control as control_db
from dirt.db import nodes as nodes_db
from dirt.db import queue as queue_db
from dirt.db import tasks as tasks_db
from dirt.dispatch.order import Lane, allocate_turns, frontier_of
from dirt.dispatch.reasons import (
    AHEAD_CAP,
    STALE_AFTER_S,
    Ahead,
    Situation,
    explain,
    no_dispatcher,
    node_views,
)
from dirt.models import DispatcherInfo, Record, Task, TaskState
from dirt.service.base import ServiceBase


def give_turns(conn: Connection, joining: Sequence[Task], known: Mapping[str, Record]) -> None:
    """Give tasks joining the queue (new, or retried) their turn, and keep each record's turn
    sequence; `known` holds records written in the same transaction (others are read)."""
    if not joining:
        return
    ids = {t.record_id for t in joining}
    stored = queue_db.records_of(conn, ids - set(known))
    records = {**stored, **known}
    keys = {(t.record_id, t.priority) for t in joining}
    saved = queue_db.next_slots(conn, [k for k in keys if k[0] in stored])
    lanes = {
        key: Lane(
            share=records[key[0]].share,
            # A record with nothing waiting at this priority starts afresh where the queue is.
            next_slot=saved.get(key) if key in saved and queue_db.has_waiting(conn, *key) else None,
        )
        for key in keys
    }
    now = time.time()
    live = [d for d in queue_db.list_dispatchers(conn) if d.alive(now, STALE_AFTER_S)]
    published = {a: by for d in live for a, by in d.heads.items()}
    sys_infos = {n.address: n.sys_info for n in nodes_db.list_nodes(conn)} if published else {}
    firsts: dict[int, int] = {}

    def fallback(priority: int) -> int:
        if priority not in firsts:
            firsts[priority] = queue_db.first_turn(conn, priority) or 0
        return firsts[priority]

    ends = allocate_turns(joining, lanes, frontier_of(published, sys_infos, fallback))
    for task in joining:
        task.record_created = records[task.record_id].created
    queue_db.save_next_slots(conn, ends)


def retry_finished(conn: Connection, task_ids: Sequence[str], seq: int) -> list[str]:
    """Finished tasks back to waiting, each with its turn as a task joining the queue now (not
    the turn it had: that would put it ahead of every record served since). Returns the ids."""
    found = [t for t in (tasks_db.get_task(conn, i) for i in task_ids) if t is not None]
    finished = [t for t in found if t.state.finished]
    give_turns(conn, finished, {})
    return control_db.retry_tasks(
        conn, [t.id for t in finished], seq, {t.id: t.turn for t in finished}
    )


def situation(conn: Connection, default_order: str) -> tuple[Situation, str]:
    """A snapshot of the queue for explaining waiting tasks, and the order in force (the
    running dispatcher's, else `default_order`). Ahead counts are read lazily, once per
    priority, from `conn`: use the situation inside the transaction."""
    now = time.time()
    dispatchers = queue_db.list_dispatchers(conn)
    live = [d for d in dispatchers if d.alive(now, STALE_AFTER_S)]
    order = live[0].order if live else default_order
    fronts: dict[int, dict[str, int]] = {}
    above: dict[int, int] = {}

    def ahead(task: Task) -> Ahead:
        p = task.priority
        if p not in fronts:
            ids = queue_db.front(conn, order, p, AHEAD_CAP)
            fronts[p] = {task_id: i for i, task_id in enumerate(ids)}
            above[p] = queue_db.waiting_above(conn, p, AHEAD_CAP)
        return fronts[p].get(task.id), above[p]

    views = node_views(nodes_db.list_nodes(conn), live, agents_db.jobs_per_node(conn))
    return Situation(now, dispatchers, views, ahead), order


def explain_waiting(conn: Connection, tasks: Iterable[Task], default_order: str) -> None:
    """Set `waiting_reason` of each waiting task among `tasks` to why it waits now."""
    waiting = [t for t in tasks if t.state is TaskState.WAITING]
    if not waiting:
        return
    found, _ = situation(conn, default_order)
    for task in waiting:
        task.waiting_reason = explain(task, found)


@dataclass
class QueueEntry:
    """One record in the queue view."""

    record: Record
    waiting: int
    running: int
    gets: float  # its part of the tasks running now (0..1)


@dataclass
class QueueView:
    entries: list[QueueEntry]
    records: int  # records with waiting or running tasks, in all
    waiting: int
    running: int
    order: str
    dispatchers: list[DispatcherInfo]  # running now
    idle: str | None  # "no dispatcher is running (...)" when none is


class Queue(ServiceBase):
    def queue(self, limit: int = 100) -> QueueView:
        """Per record with waiting or running tasks (oldest first, at most `limit`): its
        counts and the part of the running tasks it gets."""
        with self._read() as conn:
            rows, records, waiting, running = queue_db.queue_rows(conn, limit)
            known = queue_db.list_dispatchers(conn)
        now = time.time()
        live = [d for d in known if d.alive(now, STALE_AFTER_S)]
        entries = [
            QueueEntry(r.record, r.waiting, r.running, r.running / running if running else 0.0)
            for r in rows
        ]
        order = live[0].order if live else self.settings.dispatch.order
        return QueueView(entries, records, waiting, running, order, live, no_dispatcher(known, now))

    def dispatcher_announcements(self) -> list[DispatcherInfo]:
        """Every dispatcher that announced itself, latest seen first (running or not)."""
        with self._read() as conn:
            return queue_db.list_dispatchers(conn)
