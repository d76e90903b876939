"""Tasks: insert, claim atomically, finish, requeue, and the reads the pages and loop need."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update

from dirt.db.records import _number
from dirt.db.schema import attempts, tasks
from dirt.models import Attempt, Task, TaskState

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
)


def task_from_row(row: Any) -> Task:
    """A Task from a full row or from a row of DISPATCH_COLUMNS."""
    fields = row._mapping
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
        created=_number(fields["created"]),
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
        seq=fields.get("seq", 0),
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


def task_history(
    conn: Connection, name: str, limit: int = 50, before: tuple[float, str] | None = None
) -> list[Task]:
    """Every run of task `name` across records, newest first, keyset paginated."""
    query = (
        select(tasks)
        .where(tasks.c.name == name)
        .order_by(tasks.c.created.desc(), tasks.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        created, task_id = before
        query = query.where(
            (tasks.c.created < created) | ((tasks.c.created == created) & (tasks.c.id < task_id))
        )
    return [task_from_row(row) for row in conn.execute(query)]


def waiting_tasks(conn: Connection, limit: int) -> list[Task]:
    """The waiting tasks the dispatcher considers first: higher priority, then oldest."""
    query = (
        select(*DISPATCH_COLUMNS)
        .where(tasks.c.state == TaskState.WAITING.value)
        .order_by(tasks.c.priority.desc(), tasks.c.created, tasks.c.id)
        .limit(limit)
    )
    return [task_from_row(row) for row in conn.execute(query)]


def claim_tasks(
    conn: Connection, claims: Sequence[tuple[str, str]], master: str, now: float, seq: int
) -> list[str]:
    """Atomically move waiting tasks to running on their nodes; returns the ids claimed.

    Each claim is one conditional UPDATE: a task another master took first is left alone.
    """
    claimed = []
    for task_id, node in claims:
        row = conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.state == TaskState.WAITING.value)
            .values(
                state=TaskState.RUNNING.value,
                node=node,
                started=now,
                completed=None,
                attempts=tasks.c.attempts + 1,
                claimed_by=master,
                waiting_reason=None,
                seq=seq,
            )
            .returning(tasks.c.attempts)
        ).first()
        if row is not None:
            claimed.append((task_id, node, row[0]))
    if claimed:
        conn.execute(
            insert(attempts),
            [{"task_id": t, "number": n, "node": node, "started": now} for t, node, n in claimed],
        )
    return [t for t, _, _ in claimed]


def finish_tasks(conn: Connection, outcomes: Sequence[dict[str, Any]], seq: int) -> list[str]:
    """Store final states; only tasks still running under the given claim are touched.

    Each outcome: id, master, attempt, state, completed, results, reason, module_sha256, output.
    Returns the ids written.
    """
    written = []
    for o in outcomes:
        result = conn.execute(
            update(tasks)
            .where(
                tasks.c.id == o["id"],
                tasks.c.state == TaskState.RUNNING.value,
                tasks.c.claimed_by == o["master"],
                tasks.c.attempts == o["attempt"],
            )
            .values(
                state=o["state"],
                completed=o["completed"],
                results=o["results"],
                reason=o["reason"],
                module_sha256=o["module_sha256"],
                output=o["output"],
                seq=seq,
            )
        )
        if result.rowcount == 1:
            written.append(o["id"])
    _close_attempts(
        conn,
        [o for o in outcomes if o["id"] in set(written)],
    )
    return written


def _close_attempts(conn: Connection, outcomes: Sequence[dict[str, Any]]) -> None:
    if not outcomes:
        return
    conn.execute(
        update(attempts)
        .where(
            and_(attempts.c.task_id == bindparam("b_task"), attempts.c.number == bindparam("b_n"))
        )
        .values(
            completed=bindparam("b_completed"),
            outcome=bindparam("b_outcome"),
            reason=bindparam("b_reason"),
        ),
        [
            {
                "b_task": o["id"],
                "b_n": o["attempt"],
                "b_completed": o["completed"],
                "b_outcome": o["state"],
                "b_reason": o["reason"],
            }
            for o in outcomes
        ],
    )


def requeue_tasks(
    conn: Connection,
    items: Sequence[tuple[str, int]],
    reason: str,
    now: float,
    seq: int,
    master: str | None = None,
) -> list[str]:
    """Running tasks (id, attempt) back to waiting, keeping their attempt history."""
    written = []
    for task_id, attempt in items:
        conditions = [
            tasks.c.id == task_id,
            tasks.c.state == TaskState.RUNNING.value,
            tasks.c.attempts == attempt,
        ]
        if master is not None:
            conditions.append(tasks.c.claimed_by == master)
        result = conn.execute(
            update(tasks)
            .where(*conditions)
            .values(
                state=TaskState.WAITING.value,
                node=None,
                started=None,
                claimed_by=None,
                waiting_reason=reason,
                seq=seq,
            )
        )
        if result.rowcount == 1:
            written.append(task_id)
    _close_attempts(
        conn,
        [
            {"id": t, "attempt": a, "completed": now, "state": "lost", "reason": reason}
            for t, a in items
            if t in set(written)
        ],
    )
    return written


def running_tasks(conn: Connection, master: str | None = None) -> list[Task]:
    query = select(tasks).where(tasks.c.state == TaskState.RUNNING.value)
    if master is not None:
        query = query.where(tasks.c.claimed_by == master)
    return [task_from_row(row) for row in conn.execute(query)]


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


def set_waiting_reasons(conn: Connection, reasons: dict[str, str | None], seq: int) -> None:
    if not reasons:
        return
    conn.execute(
        update(tasks)
        .where(tasks.c.id == bindparam("b_id"), tasks.c.state == TaskState.WAITING.value)
        .values(waiting_reason=bindparam("b_reason"), seq=seq),
        [{"b_id": k, "b_reason": v} for k, v in reasons.items()],
    )


def fail_waiting(conn: Connection, task_id: str, reason: str, now: float, seq: int) -> bool:
    result = conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.state == TaskState.WAITING.value)
        .values(state=TaskState.FAILED.value, reason=reason, completed=now, seq=seq)
    )
    return result.rowcount == 1


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
                row.outcome,
                row.reason,
            )
        )
    return found
