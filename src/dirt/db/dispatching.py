"""The dispatcher's writes: reserve, start, finish, requeue, release. These run thousands of
times a second, so each is a statement built once (`Prepared`).

Every change is conditional on the state the caller last saw (still waiting, still held by this
master, the same attempt), so a task another master, a cancel or a retry moved on is left alone
and the caller learns which ids it actually changed.

Each of these statements moves the task's `revision` on itself (`_NEXT_REVISION`): the trigger
that does it for every other writer (migration 0100_couch) fires only when a write leaves the
revision as it was, and its second UPDATE of the row would double the cost of the write.

Reservations let the dispatcher keep the next task for a node in hand while the node's slots
are busy, so a freed slot is refilled without waiting for the store. A reserved task is still
waiting (honestly: it has not started) but carries the reserving master in claimed_by, which
keeps every other master off it. Starting it is a second conditional UPDATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, select, update

from dirt.db.engine import Prepared
from dirt.db.schema import ACTIVE_CLAIM, attempts, tasks
from dirt.db.tasks import BACK_TO_WAITING
from dirt.models import FINISHED_STATES, Finished, Outcome, TaskState

# One write, one revision, as the trigger would give it (see the module's docstring).
_NEXT_REVISION = {"revision": tasks.c.revision + 1}

# A task this master reserved and nobody changed since: still waiting, still ours, the same
# attempt count it had when it was reserved.
_STILL_RESERVED = (
    tasks.c.id == bindparam("b_id"),
    tasks.c.state == TaskState.WAITING.value,
    tasks.c.claimed_by == bindparam("b_master"),
    tasks.c.attempts == bindparam("b_previous"),
)
_RESERVE = Prepared(
    update(tasks)
    .where(
        tasks.c.id == bindparam("b_id"),
        tasks.c.state == TaskState.WAITING.value,
        tasks.c.claimed_by.is_(None),
    )
    .values(claimed_by=bindparam("b_master"), seq=bindparam("b_seq"), **_NEXT_REVISION)
)
_START = Prepared(
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
        **_NEXT_REVISION,
    )
)
_OPENED = ("task_id", "number", "node", "started")
_OPEN_ATTEMPT = Prepared(insert(attempts).values({name: bindparam(name) for name in _OPENED}))
# The attempt of a run started and finished in one write (`_START_AND_FINISH`).
_RAN_ATTEMPT = Prepared(
    insert(attempts).values(
        {name: bindparam(name) for name in (*_OPENED, "completed", "outcome", "reason")}
    )
)
# What a finished run writes, whether or not its start was written before.
_FINISHED_VALUES = {
    "state": bindparam("b_state"),
    "completed": bindparam("b_completed"),
    "results": bindparam("b_results", type_=tasks.c.results.type),
    "reason": bindparam("b_reason"),
    "module_sha256": bindparam("b_sha"),
    "output": bindparam("b_output"),
    "seq": bindparam("b_seq"),
    **_NEXT_REVISION,
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
# A reserved task that finished before its start was written is stored in one write, from
# waiting straight to its final state: it ran for less than one store transaction.
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
_CLOSE_ATTEMPT = Prepared(
    update(attempts)
    .where(and_(attempts.c.task_id == bindparam("b_task"), attempts.c.number == bindparam("b_n")))
    .values(
        completed=bindparam("b_completed"),
        outcome=bindparam("b_outcome"),
        reason=bindparam("b_reason"),
    )
)

Start = tuple[str, str, float, int]
"""A reserved task to mark running: (task id, node, started, attempt number)."""


def _write_each(
    conn: Connection,
    statement: Prepared,
    params: list[dict[str, Any]],
    seq: int,
    states: Sequence[TaskState],
) -> list[str]:
    """Run `statement` for every row; returns the b_id of the rows it changed.

    `statement` stamps `seq` and leaves each row it changes in one of `states`, so when some
    task moved on (requeued, cancelled) and fewer rows changed than asked, the ones that did
    are read back by that stamp.
    """
    if statement.run(conn, params) == len(params):
        return [p["b_id"] for p in params]  # the usual case: one executemany wrote them all
    ids = [p["b_id"] for p in params]
    query = select(tasks.c.id).where(
        tasks.c.id.in_(ids), tasks.c.seq == seq, tasks.c.state.in_([s.value for s in states])
    )
    changed = set(conn.execute(query).scalars())
    return [t for t in ids if t in changed]


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


def start_tasks(conn: Connection, starts: Sequence[Start], master: str, seq: int) -> list[str]:
    """Reserved tasks to running; returns the ids started.

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
    started = _write_each(conn, _START, params, seq, [TaskState.RUNNING])
    done = set(started)
    _OPEN_ATTEMPT.run(
        conn,
        [
            {"task_id": t, "number": n, "node": node, "started": now}
            for t, node, now, n in starts
            if t in done
        ],
    )
    if len(started) < len(starts):
        # A start repeated after the store went away mid-commit finds the task started.
        again = _same_claim(conn, [(t, n) for t, _, _, n in starts if t not in done], master)
        started += [t for t, _, _, _ in starts if t in again and again[t] == TaskState.RUNNING]
    return started


def _same_claim(
    conn: Connection, items: Sequence[tuple[str, int]], master: str
) -> dict[str, TaskState]:
    """Of (task id, attempt) pairs, the state of those `master` still holds at that attempt."""
    if not items:
        return {}
    wanted = dict(items)
    query = select(tasks.c.id, tasks.c.attempts, tasks.c.state).where(
        tasks.c.id.in_(list(wanted)), tasks.c.claimed_by == master
    )
    return {
        row.id: TaskState(row.state)
        for row in conn.execute(query)
        if wanted.get(row.id) == row.attempts
    }


def already_finished(conn: Connection, finished: Sequence[Finished], master: str) -> set[str]:
    """Of runs whose finish was refused, those stored in a final state under the same claim
    before (a write repeated after the store went away mid-commit)."""
    found = _same_claim(conn, [(f.task_id, f.attempt) for f in finished], master)
    return {t for t, state in found.items() if state.finished}


def finish_tasks(
    conn: Connection, finished: Sequence[Finished], master: str, seq: int
) -> list[str]:
    """Store final states of runs `master` holds; returns the ids written.

    Only a task still held under the claim that ran (this master, the same attempt) changes: a
    result from a stale attempt, or for a task requeued or cancelled meanwhile, is refused. A
    run whose start was never written (`started` set) is started and finished in one write.
    """
    if not finished:
        return []
    running: list[dict[str, Any]] = []
    unstarted: list[dict[str, Any]] = []
    for f in finished:
        params = {
            "b_id": f.task_id,
            "b_master": master,
            "b_attempt": f.attempt,
            "b_state": f.state.value,
            "b_completed": f.completed,
            "b_results": f.results,
            "b_reason": f.reason,
            "b_sha": f.module_sha256,
            "b_output": f.output,
            "b_seq": seq,
        }
        if f.started is None:
            running.append(params)
        else:
            params.update(b_node=f.node, b_started=f.started, b_previous=f.attempt - 1)
            unstarted.append(params)
    final = list(FINISHED_STATES)
    written = _write_each(conn, _FINISH, running, seq, final) if running else []
    if written:
        done = set(written)
        _close_attempts(
            conn,
            [
                (f.task_id, f.attempt, f.completed, f.state.value, f.reason)
                for f in finished
                if f.started is None and f.task_id in done
            ],
        )
    if unstarted:
        fresh = set(_write_each(conn, _START_AND_FINISH, unstarted, seq, final))
        if fresh:
            _RAN_ATTEMPT.run(
                conn,
                [
                    {
                        "task_id": f.task_id,
                        "number": f.attempt,
                        "node": f.node,
                        "started": f.started,
                        "completed": f.completed,
                        "outcome": f.state.value,
                        "reason": f.reason,
                    }
                    for f in finished
                    if f.started is not None and f.task_id in fresh
                ],
            )
            written += [f.task_id for f in finished if f.started is not None and f.task_id in fresh]
    return written


def _close_attempts(
    conn: Connection, closed: Sequence[tuple[str, int, float, str, str | None]]
) -> None:
    """Close attempts: (task id, attempt number, completed, outcome value, reason)."""
    _CLOSE_ATTEMPT.run(
        conn,
        [
            {
                "b_task": task_id,
                "b_n": number,
                "b_completed": completed,
                "b_outcome": outcome,
                "b_reason": reason,
            }
            for task_id, number, completed, outcome, reason in closed
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
    """Running tasks (id, attempt) back to waiting, keeping their attempt history (the attempt
    closes as lost). With `master`, only tasks that master holds."""
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
            .values(**BACK_TO_WAITING, waiting_reason=reason, seq=seq)
        )
        if result.rowcount == 1:
            written.append(task_id)
    if not written:
        return written
    done = set(written)
    _close_attempts(conn, [(t, a, now, Outcome.LOST.value, reason) for t, a in items if t in done])
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


def release_reservations(
    conn: Connection, seq: int, master: str | None = None, task_ids: Sequence[str] | None = None
) -> int:
    """Give reserved (still waiting) tasks back to every master: of one master, or by id."""
    query = (
        update(tasks)
        .where(ACTIVE_CLAIM, tasks.c.state == TaskState.WAITING.value)
        .values(claimed_by=None, seq=seq)
    )
    if master is not None:
        query = query.where(tasks.c.claimed_by == master)
    if task_ids is not None:
        query = query.where(tasks.c.id.in_(list(task_ids)))
    return conn.execute(query).rowcount


def fail_waiting(conn: Connection, task_id: str, reason: str, now: float, seq: int) -> bool:
    """A waiting task that can never run fails with `reason`; False when it no longer waits."""
    result = conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.state == TaskState.WAITING.value)
        .values(state=TaskState.FAILED.value, reason=reason, completed=now, seq=seq)
    )
    return result.rowcount == 1
