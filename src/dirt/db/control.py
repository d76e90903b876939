"""What a user asks of tasks by hand: cancel one, run finished ones again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, update

from dirt.db.schema import tasks
from dirt.db.tasks import BACK_TO_WAITING
from dirt.models import FINISHED_STATES, TaskState

CANCELLED_REASON = "cancelled by request"


def cancel_task(conn: Connection, task_id: str, now: float, seq: int) -> bool:
    """Cancel a task: a waiting one at once, a running one by asking its dispatcher to kill it.

    False when there is nothing to cancel: the task is finished (or does not exist).
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
        return True
    result = conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.state == TaskState.RUNNING.value)
        .values(cancel_requested=True, seq=seq)
    )
    return result.rowcount == 1


_FINISHED_VALUES = sorted(s.value for s in FINISHED_STATES)


def retry_tasks(
    conn: Connection, task_ids: Sequence[str], seq: int, turns: Mapping[str, int] | None = None
) -> list[str]:
    """Finished tasks back to waiting for another run, each at its turn in `turns` (see
    service.queue.retry_waiting, which works them out); their attempt history is kept."""
    written = []
    for task_id in task_ids:
        turn = {"turn": turns[task_id]} if turns and task_id in turns else {}
        result = conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.state.in_(_FINISHED_VALUES))
            .values(
                **BACK_TO_WAITING,
                completed=None,
                results=None,
                reason=None,
                waiting_reason=None,
                module_sha256=None,
                output=None,
                cancel_requested=False,
                seq=seq,
                **turn,
            )
        )
        if result.rowcount == 1:
            written.append(task_id)
    return written
