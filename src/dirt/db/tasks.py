"""Tasks: insert, claim atomically, finish, requeue, and the reads the pages and loop need."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update

from dirt.db.engine import Prepared
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
    # A plain dict: RowMapping.get() raises and catches internally for every absent key.
    fields = dict(row._mapping)
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
        cancel_requested=bool(fields.get("cancel_requested", False)),
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


def waiting_tasks(conn: Connection, limit: int) -> list[Task]:
    """The waiting tasks the dispatcher considers first: higher priority, then oldest."""
    query = (
        select(*DISPATCH_COLUMNS)
        .where(tasks.c.state == TaskState.WAITING.value, tasks.c.claimed_by.is_(None))
        .order_by(tasks.c.priority.desc(), tasks.c.created, tasks.c.id)
        .limit(limit)
    )
    return [task_from_row(row) for row in conn.execute(query)]


# Hot-path statements are built once: building a Core statement costs more than running it.
_CLAIM = (
    update(tasks)
    .where(tasks.c.id == bindparam("b_id"), tasks.c.state == TaskState.WAITING.value)
    .values(
        state=TaskState.RUNNING.value,
        node=bindparam("b_node"),
        started=bindparam("b_now"),
        completed=None,
        attempts=tasks.c.attempts + 1,
        claimed_by=bindparam("b_master"),
        waiting_reason=None,
        seq=bindparam("b_seq"),
    )
    .returning(tasks.c.attempts)
)
_OPEN_ATTEMPT = Prepared(
    insert(attempts).values(
        task_id=bindparam("task_id"),
        number=bindparam("number"),
        node=bindparam("node"),
        started=bindparam("started"),
    )
)


def claim_tasks(
    conn: Connection, claims: Sequence[tuple[str, str]], master: str, now: float, seq: int
) -> list[str]:
    """Atomically move waiting tasks to running on their nodes; returns the ids claimed.

    Each claim is one conditional UPDATE: a task another master took first is left alone.
    """
    claimed = []
    for task_id, node in claims:
        row = conn.execute(
            _CLAIM,
            {"b_id": task_id, "b_node": node, "b_now": now, "b_master": master, "b_seq": seq},
        ).first()
        if row is not None:
            claimed.append((task_id, node, row[0]))
    if claimed:
        _OPEN_ATTEMPT.run(
            conn,
            [{"task_id": t, "number": n, "node": node, "started": now} for t, node, n in claimed],
        )
    return [t for t, _, _ in claimed]


# What a finished run writes, whether or not its start was written before.
_FINISHED_VALUES = {
    "state": bindparam("b_state"),
    "completed": bindparam("b_completed"),
    "results": bindparam("b_results", type_=tasks.c.results.type),
    "reason": bindparam("b_reason"),
    "module_sha256": bindparam("b_sha"),
    "output": bindparam("b_output"),
    "seq": bindparam("b_seq"),
}
_FINISH = Prepared(
    update(tasks)
    .where(
        tasks.c.id == bindparam("b_id"),
        tasks.c.state == TaskState.RUNNING.value,
        tasks.c.claimed_by == bindparam("b_master"),
        tasks.c.attempts == bindparam("b_attempt"),
    )
    .values(**_FINISHED_VALUES),
    json_params=["b_results"],
)
_CLOSE_ATTEMPT = Prepared(
    (
        update(attempts)
        .where(
            and_(attempts.c.task_id == bindparam("b_task"), attempts.c.number == bindparam("b_n"))
        )
        .values(
            completed=bindparam("b_completed"),
            outcome=bindparam("b_outcome"),
            reason=bindparam("b_reason"),
        )
    ),
)


# A reserved task that finished before its start was written is stored in one write, from
# waiting straight to its final state: it ran for less than one store transaction.
# A task this master reserved and nobody changed since: still waiting, still ours, the same
# attempt count it had when it was reserved.
_STILL_RESERVED = (
    tasks.c.id == bindparam("b_id"),
    tasks.c.state == TaskState.WAITING.value,
    tasks.c.claimed_by == bindparam("b_master"),
    tasks.c.attempts == bindparam("b_previous"),
)
_START_AND_FINISH = Prepared(
    update(tasks)
    .where(*_STILL_RESERVED)
    .values(
        **_FINISHED_VALUES,
        node=bindparam("b_node"),
        started=bindparam("b_started"),
        attempts=bindparam("b_attempt"),
        waiting_reason=None,
    ),
    json_params=["b_results"],
)


def _write_each(conn: Connection, statement: Prepared, params: list[dict[str, Any]]) -> list[str]:
    """Run `statement` for every row; returns the b_id of the rows it changed."""
    if len(params) > 1 and statement.run(conn, params) == len(params):
        return [p["b_id"] for p in params]  # the usual case: one executemany wrote them all
    # Some task moved on (requeued, cancelled): find out which, one by one.
    return [p["b_id"] for p in params if statement.run(conn, [p]) == 1]


def finish_tasks(conn: Connection, outcomes: Sequence[dict[str, Any]], seq: int) -> list[str]:
    """Store final states; only tasks still held under the given claim are touched.

    Each outcome: id, master, attempt, state, completed, results, reason, module_sha256, output,
    and, for a run whose start was never written, node and started. Returns the ids written.
    """
    if not outcomes:
        return []
    params = [
        {
            "b_id": o["id"],
            "b_master": o["master"],
            "b_attempt": o["attempt"],
            "b_state": o["state"],
            "b_completed": o["completed"],
            "b_results": o["results"],
            "b_reason": o["reason"],
            "b_sha": o["module_sha256"],
            "b_output": o["output"],
            "b_seq": seq,
        }
        for o in outcomes
    ]
    running = [p for p, o in zip(params, outcomes, strict=True) if o.get("started") is None]
    unstarted = []
    for p, o in zip(params, outcomes, strict=True):
        if o.get("started") is not None:
            unstarted.append(
                {
                    **p,
                    "b_node": o["node"],
                    "b_started": o["started"],
                    "b_previous": o["attempt"] - 1,
                }
            )
    written = _write_each(conn, _FINISH, running) if running else []
    done = set(written)
    _close_attempts(conn, [o for o in outcomes if o["id"] in done])
    if unstarted:
        fresh = set(_write_each(conn, _START_AND_FINISH, unstarted))
        if fresh:
            conn.execute(
                insert(attempts),
                [
                    {
                        "task_id": o["id"],
                        "number": o["attempt"],
                        "node": o["node"],
                        "started": o["started"],
                        "completed": o["completed"],
                        "outcome": o["state"],
                        "reason": o["reason"],
                    }
                    for o in outcomes
                    if o["id"] in fresh
                ],
            )
        written += [o["id"] for o in outcomes if o["id"] in fresh]
    return written


def _close_attempts(conn: Connection, outcomes: Sequence[dict[str, Any]]) -> None:
    if not outcomes:
        return
    _CLOSE_ATTEMPT.run(
        conn,
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


# What every return to waiting clears: the node, the start and the claim of the last run.
_BACK_TO_WAITING = {
    "state": TaskState.WAITING.value,
    "node": None,
    "started": None,
    "claimed_by": None,
}


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
            .values(**_BACK_TO_WAITING, waiting_reason=reason, seq=seq)
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
    if written:
        # A task cancelled while it ran, whose node went away before the kill: cancelled now.
        conn.execute(
            update(tasks)
            .where(tasks.c.id.in_(written), tasks.c.cancel_requested.is_(True))
            .values(
                state=TaskState.CANCELLED.value,
                completed=now,
                reason="cancelled; its node was lost before the kill reached it",
                waiting_reason=None,
                seq=seq,
            )
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


CANCELLED_REASON = "cancelled by request"


def cancel_task(conn: Connection, task_id: str, now: float, seq: int) -> str | None:
    """Cancel a task: a waiting one at once, a running one by asking its dispatcher to kill it.

    Returns "cancelled", "requested" or None when the task is finished (or does not exist).
    """
    result = conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.state == TaskState.WAITING.value)
        .values(
            state=TaskState.CANCELLED.value,
            completed=now,
            reason=CANCELLED_REASON,
            waiting_reason=None,
            seq=seq,
        )
    )
    if result.rowcount == 1:
        return "cancelled"
    result = conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.state == TaskState.RUNNING.value)
        .values(cancel_requested=True, seq=seq)
    )
    return "requested" if result.rowcount == 1 else None


def cancel_requested(conn: Connection, master: str) -> list[tuple[str, int]]:
    """(task id, attempt) of running tasks claimed by `master` that someone asked to cancel."""
    query = select(tasks.c.id, tasks.c.attempts).where(
        tasks.c.state == TaskState.RUNNING.value,
        tasks.c.claimed_by == master,
        tasks.c.cancel_requested.is_(True),
    )
    return [(row[0], row[1]) for row in conn.execute(query)]


def retry_tasks(conn: Connection, task_ids: Sequence[str], seq: int) -> list[str]:
    """Finished tasks back to waiting for another run; their attempt history is kept."""
    finished = [s.value for s in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED)]
    written = []
    for task_id in task_ids:
        result = conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.state.in_(finished))
            .values(
                **_BACK_TO_WAITING,
                completed=None,
                results=None,
                reason=None,
                waiting_reason=None,
                module_sha256=None,
                output=None,
                cancel_requested=False,
                seq=seq,
            )
        )
        if result.rowcount == 1:
            written.append(task_id)
    return written


def failed_task_ids(conn: Connection, record_id: str) -> list[str]:
    query = (
        select(tasks.c.id)
        .where(tasks.c.record_id == record_id, tasks.c.state == TaskState.FAILED.value)
        .order_by(tasks.c.created, tasks.c.id)
    )
    return list(conn.execute(query).scalars())


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
        if outcome != "lost":
            break
        count += 1
    return count


# Reservations let the dispatcher keep the next task for a node in hand while the node's slots
# are busy, so a freed slot is refilled without waiting for the store. A reserved task is still
# waiting (honestly: it has not started) but carries the reserving master in claimed_by, which
# keeps every other master off it. Starting it is a second conditional UPDATE.
_RESERVE = Prepared(
    (
        update(tasks)
        .where(
            tasks.c.id == bindparam("b_id"),
            tasks.c.state == TaskState.WAITING.value,
            tasks.c.claimed_by.is_(None),
        )
        .values(claimed_by=bindparam("b_master"), seq=bindparam("b_seq"))
    ),
)
_START = Prepared(
    (
        update(tasks)
        .where(*_STILL_RESERVED)
        .values(
            state=TaskState.RUNNING.value,
            node=bindparam("b_node"),
            started=bindparam("b_now"),
            completed=None,
            attempts=bindparam("b_attempt"),
            waiting_reason=None,
            seq=bindparam("b_seq"),
        )
    ),
)


def reserve_tasks(conn: Connection, task_ids: Sequence[str], master: str, seq: int) -> list[str]:
    """Reserve waiting, unreserved tasks for `master`; returns the ids it got."""
    if not task_ids:
        return []
    params = [{"b_id": t, "b_master": master, "b_seq": seq} for t in task_ids]
    if _RESERVE.run(conn, params) == len(params):
        return list(task_ids)
    # Another master reserved some of them first: find out which are ours.
    query = select(tasks.c.id).where(
        tasks.c.id.in_(list(task_ids)),
        tasks.c.claimed_by == master,
        tasks.c.state == TaskState.WAITING.value,
    )
    ours = set(conn.execute(query).scalars())
    return [t for t in task_ids if t in ours]


def start_tasks(
    conn: Connection, starts: Sequence[tuple[str, str, float, int]], master: str, seq: int
) -> list[str]:
    """Reserved tasks (id, node, started, attempt) to running; returns the ids started.

    The attempt number is the reserved task's attempts + 1: while reserved, only this master
    changes the task, so the number is known without reading it back.
    """
    if not starts:
        return []
    params = [
        {
            "b_id": t,
            "b_master": master,
            "b_node": node,
            "b_now": now,
            "b_attempt": n,
            "b_previous": n - 1,
            "b_seq": seq,
        }
        for t, node, now, n in starts
    ]
    started = _write_each(conn, _START, params)
    done = set(started)
    _OPEN_ATTEMPT.run(
        conn,
        [
            {"task_id": t, "number": n, "node": node, "started": now}
            for t, node, now, n in starts
            if t in done
        ],
    )
    return started


def release_reservations(
    conn: Connection, seq: int, master: str | None = None, task_ids: Sequence[str] | None = None
) -> int:
    """Give reserved (still waiting) tasks back to every master: of one master, or by id."""
    query = (
        update(tasks)
        .where(tasks.c.state == TaskState.WAITING.value, tasks.c.claimed_by.is_not(None))
        .values(claimed_by=None, seq=seq)
    )
    if master is not None:
        query = query.where(tasks.c.claimed_by == master)
    if task_ids is not None:
        query = query.where(tasks.c.id.in_(list(task_ids)))
    return conn.execute(query).rowcount


def reserving_masters(conn: Connection) -> list[str]:
    """Masters holding reservations, for recovery after a dispatcher died."""
    query = (
        select(tasks.c.claimed_by)
        .where(tasks.c.state == TaskState.WAITING.value, tasks.c.claimed_by.is_not(None))
        .distinct()
    )
    return [m for m in conn.execute(query).scalars()]
