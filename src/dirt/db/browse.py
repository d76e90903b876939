"""The reads behind the web pages, written so their cost does not grow with the store.

Every list is a keyset scan of an index: (created, id) row-value comparisons, never OFFSET and
never COUNT(*) over tasks. Counts come from `record_states` and `state_counts`, which triggers
keep (migration 0002).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select, tuple_

from dirt.db.records import record_from_row
from dirt.db.schema import attempts, nodes, record_states, records, state_counts, tasks
from dirt.db.tasks import task_from_row
from dirt.models import Record, Task, TaskState


def _like(search: str) -> str:
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def record_page(
    conn: Connection,
    limit: int,
    before: tuple[float, str] | None = None,
    state: str | None = None,
    search: str | None = None,
) -> list[Record]:
    """Records newest first; only those with a task in `state`; id or description like `search`."""
    if state is None:
        query = select(records).order_by(records.c.created.desc(), records.c.id.desc())
        if before is not None:
            query = query.where(tuple_(records.c.created, records.c.id) < tuple_(*before))
    else:
        query = (
            select(records)
            .join(record_states, record_states.c.record_id == records.c.id)
            .where(record_states.c.state == state)
            .order_by(record_states.c.created.desc(), record_states.c.record_id.desc())
        )
        if before is not None:
            query = query.where(
                tuple_(record_states.c.created, record_states.c.record_id) < tuple_(*before)
            )
    if search:
        pattern = _like(search)
        query = query.where(
            records.c.id.like(pattern, escape="\\")
            | records.c.description.like(pattern, escape="\\")
        )
    return [record_from_row(row) for row in conn.execute(query.limit(limit))]


def record_counts(conn: Connection, record_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """For each record id, its number of tasks per state (every state present)."""
    counts = {rid: {s.value: 0 for s in TaskState} for rid in record_ids}
    if not record_ids:
        return counts
    query = select(record_states.c.record_id, record_states.c.state, record_states.c.n).where(
        record_states.c.record_id.in_(list(record_ids))
    )
    for record_id, state, n in conn.execute(query):
        counts[record_id][state] = int(n)
    return counts


def task_runs(
    conn: Connection, name: str, limit: int, before: tuple[float, str] | None = None
) -> list[Task]:
    """Every run of task `name` across records, newest first (index name, created, id)."""
    query = (
        select(tasks)
        .where(tasks.c.name == name)
        .order_by(tasks.c.created.desc(), tasks.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(tuple_(tasks.c.created, tasks.c.id) < tuple_(*before))
    return [task_from_row(row) for row in conn.execute(query)]


def run_outcomes(conn: Connection, name: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` runs of `name`, just what a chart needs."""
    query = (
        select(
            tasks.c.id,
            tasks.c.record_id,
            tasks.c.created,
            tasks.c.started,
            tasks.c.completed,
            tasks.c.state,
        )
        .where(tasks.c.name == name)
        .order_by(tasks.c.created.desc(), tasks.c.id.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def state_totals(conn: Connection) -> dict[str, int]:
    totals = {s.value: 0 for s in TaskState}
    for state, n in conn.execute(select(state_counts.c.state, state_counts.c.n)):
        totals[state] = int(n)
    return totals


def attempts_started(conn: Connection) -> int:
    """How many task attempts were ever started (attempt ids only grow)."""
    return int(conn.execute(select(func.max(attempts.c.id))).scalar_one_or_none() or 0)


def recent_durations(conn: Connection, limit: int) -> list[float]:
    """Run times of the `limit` most recently completed tasks (index on completed)."""
    query = (
        select(tasks.c.started, tasks.c.completed)
        .where(tasks.c.completed.is_not(None))
        .order_by(tasks.c.completed.desc())
        .limit(limit)
    )
    return [c - s for s, c in conn.execute(query) if s is not None and c is not None and c >= s]


def nodes_online(conn: Connection) -> tuple[int, int]:
    """(online and enabled, all) nodes."""
    found = list(conn.execute(select(nodes.c.online, nodes.c.enabled)))
    return sum(1 for online, enabled in found if online and enabled), len(found)


def running_on(conn: Connection, address: str, limit: int = 50) -> list[Task]:
    query = (
        select(tasks)
        .where(tasks.c.state == TaskState.RUNNING.value, tasks.c.node == address)
        .limit(limit)
    )
    return [task_from_row(row) for row in conn.execute(query)]
