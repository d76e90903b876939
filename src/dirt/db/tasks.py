"""Tasks: rows to models, inserting new tasks, and every read of tasks and their attempts.

The dispatcher's state changes are in `dispatching.py`, cancel and retry in `control.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Select, func, insert, literal_column, select

from dirt.db.records import epoch_seconds
from dirt.db.schema import ORDERS, attempts, tasks
from dirt.models import Attempt, Outcome, Task, TaskState

DISPATCH_COLUMNS = (
    tasks.c.id,
    tasks.c.record_id,
    tasks.c.name,
    tasks.c.kwargs,
    tasks.c.requires,
    tasks.c.platform,
    tasks.c.priority,
    tasks.c.timeout,
    tasks.c.max_attempts,
    tasks.c.created,
    tasks.c.attempts,
    tasks.c.turn,
    tasks.c.record_created,
)

# What every return to waiting clears: the node, the start and the claim of the last run.
BACK_TO_WAITING: dict[str, Any] = {
    "state": TaskState.WAITING.value,
    "node": None,
    "started": None,
    "claimed_by": None,
}


def task_from_row(row: Any) -> Task:
    """A Task from a full row or from a row of DISPATCH_COLUMNS."""
    # A plain dict: RowMapping.get() raises and catches internally for every absent key.
    return task_from_fields(dict(row._mapping))


def task_from_fields(fields: dict[str, Any]) -> Task:
    """A Task from its columns by name (JSON ones decoded)."""
    return Task(
        id=fields["id"],
        record_id=fields["record_id"],
        name=fields["name"],
        kwargs=fields["kwargs"],
        requires=fields["requires"] or [],
        platform=fields["platform"],
        priority=fields["priority"],
        timeout=fields["timeout"],
        max_attempts=fields["max_attempts"],
        created=epoch_seconds(fields["created"]),
        attempts=fields["attempts"],
        state=TaskState(fields.get("state", TaskState.WAITING.value)),
        node=fields.get("node"),
        started=fields.get("started"),
        completed=fields.get("completed"),
        results=fields.get("results"),
        reason=fields.get("reason"),
        waiting_reason=fields.get("waiting_reason"),
        module_sha256=fields.get("module_sha256"),
        output=fields.get("output"),
        extra=fields.get("extra") or {},
        cancel_requested=bool(fields.get("cancel_requested", False)),
        seq=fields.get("seq", 0),
        turn=fields.get("turn", 0),
        record_created=fields.get("record_created", 0.0),
    )


def insert_tasks(conn: Connection, items: Sequence[Task], seq: int) -> None:
    if not items:
        return
    conn.execute(
        insert(tasks),
        [
            {
                "id": t.id,
                "record_id": t.record_id,
                "name": t.name,
                "kwargs": t.kwargs,
                "requires": t.requires,
                "platform": t.platform,
                "priority": t.priority,
                "timeout": t.timeout,
                "max_attempts": t.max_attempts,
                "created": t.created,
                "state": TaskState.WAITING.value,
                "attempts": 0,
                "extra": t.extra,
                "seq": seq,
                "turn": t.turn,
                "record_created": t.record_created,
            }
            for t in items
        ],
    )


def get_task(conn: Connection, task_id: str) -> Task | None:
    row = conn.execute(select(tasks).where(tasks.c.id == task_id)).first()
    return task_from_row(row) if row else None


def existing_task_ids(conn: Connection, ids: Iterable[str]) -> set[str]:
    wanted = list(set(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(conn.execute(select(tasks.c.id).where(tasks.c.id.in_(chunk))).scalars())
    return found


def tasks_of_record(conn: Connection, record_id: str) -> list[Task]:
    query = (
        select(tasks).where(tasks.c.record_id == record_id).order_by(tasks.c.created, tasks.c.id)
    )
    return [task_from_row(row) for row in conn.execute(query)]


def failed_task_ids(conn: Connection, record_id: str) -> list[str]:
    query = (
        select(tasks.c.id)
        .where(tasks.c.record_id == record_id, tasks.c.state == TaskState.FAILED.value)
        .order_by(tasks.c.created, tasks.c.id)
    )
    return list(conn.execute(query).scalars())


# ---- what the dispatcher reads ------------------------------------------------------------


# Waiting tasks in each order (dispatch.select.key_of sorts the same way). The state is a
# literal so the partial index of the fair order (waiting tasks only) serves the read.
WAITING = tasks.c.state == literal_column("'waiting'")
# SQLite's planner, without statistics, may take the other index and sort every waiting task
# of a priority: each order names its own (an error, not a slow read, if it cannot be used).
INDEX_OF = {"fifo": "ix_tasks_waiting", "fair": "ix_tasks_fair"}


def in_order(query: Select[Any], order: str) -> Select[Any]:
    """`query` over waiting tasks, in `order`, read through that order's index."""
    return query.order_by(*ORDERS[order]).with_hint(
        tasks, f"INDEXED BY {INDEX_OF[order]}", dialect_name="sqlite"
    )


def waiting_query(limit: int, order: str) -> Select[Any]:
    """Waiting tasks no master holds, as the dispatcher considers them: higher priority first,
    then in `order` ("fair": records take turns; "fifo": oldest first)."""
    query = select(*DISPATCH_COLUMNS).where(WAITING, tasks.c.claimed_by.is_(None))
    return in_order(query, order).limit(limit)


def waiting_tasks(conn: Connection, limit: int, order: str = "fifo") -> list[Task]:
    return [task_from_row(row) for row in conn.execute(waiting_query(limit, order))]


def running_claims(conn: Connection) -> list[tuple[str, int, str | None]]:
    """(task id, attempt, claiming master) of every running task."""
    query = select(tasks.c.id, tasks.c.attempts, tasks.c.claimed_by).where(
        tasks.c.state == TaskState.RUNNING.value
    )
    return [(row[0], row[1], row[2]) for row in conn.execute(query)]


def running_per_node(conn: Connection) -> dict[str, int]:
    query = (
        select(tasks.c.node, func.count())
        .where(tasks.c.state == TaskState.RUNNING.value)
        .group_by(tasks.c.node)
    )
    return {node: n for node, n in conn.execute(query)}


def reserving_masters(conn: Connection) -> list[str]:
    """Masters holding reservations, for recovery after a dispatcher died."""
    query = (
        select(tasks.c.claimed_by)
        .where(tasks.c.state == TaskState.WAITING.value, tasks.c.claimed_by.is_not(None))
        .distinct()
    )
    return list(conn.execute(query).scalars())


def cancel_requested(conn: Connection, master: str) -> list[tuple[str, int]]:
    """(task id, attempt) of running tasks claimed by `master` that someone asked to cancel."""
    query = select(tasks.c.id, tasks.c.attempts).where(
        tasks.c.state == TaskState.RUNNING.value,
        tasks.c.claimed_by == master,
        tasks.c.cancel_requested.is_(True),
    )
    return [(row[0], row[1]) for row in conn.execute(query)]


# ---- attempts ------------------------------------------------------------------------------


def attempts_of(conn: Connection, task_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    found: dict[str, list[Attempt]] = {t: [] for t in task_ids}
    if not task_ids:
        return found
    query = (
        select(attempts)
        .where(attempts.c.task_id.in_(list(task_ids)))
        .order_by(attempts.c.task_id, attempts.c.number)
    )
    for row in conn.execute(query):
        found[row.task_id].append(
            Attempt(
                row.task_id,
                row.number,
                row.node,
                row.started,
                row.completed,
                Outcome(row.outcome) if row.outcome is not None else None,
                row.reason,
            )
        )
    return found


def trailing_lost_attempts(conn: Connection, task_id: str) -> int:
    """How many of the task's latest closed attempts in a row lost their node.

    A retry by hand ends such a run (its last attempt closed as failed or cancelled), so a
    retried task gets its full max_attempts again.
    """
    query = (
        select(attempts.c.outcome)
        .where(attempts.c.task_id == task_id, attempts.c.outcome.is_not(None))
        .order_by(attempts.c.number.desc())
    )
    count = 0
    for outcome in conn.execute(query).scalars():
        if outcome != Outcome.LOST:
            break
        count += 1
    return count
