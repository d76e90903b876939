"""The reads the service makes to plan notifications, inside the write transaction of the
change: the tasks a change touched, their records, and which records still have work left."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select

from dirt.db.records import record_from_row
from dirt.db.schema import record_states, records, tasks
from dirt.db.tasks import task_from_row
from dirt.models import Record, Task, TaskState

_CHUNK = 500
_UNFINISHED = (TaskState.WAITING.value, TaskState.RUNNING.value)


def _chunks(ids: Iterable[str]) -> Iterable[list[str]]:
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), _CHUNK):
        yield wanted[start : start + _CHUNK]


def tasks_by_id(conn: Connection, task_ids: Iterable[str]) -> dict[str, Task]:
    found: dict[str, Task] = {}
    for chunk in _chunks(task_ids):
        for row in conn.execute(select(tasks).where(tasks.c.id.in_(chunk))):
            task = task_from_row(row)
            found[task.id] = task
    return found


def records_by_id(conn: Connection, record_ids: Iterable[str]) -> dict[str, Record]:
    found: dict[str, Record] = {}
    for chunk in _chunks(record_ids):
        for row in conn.execute(select(records).where(records.c.id.in_(chunk))):
            record = record_from_row(row)
            found[record.id] = record
    return found


def unfinished_records(conn: Connection, record_ids: Iterable[str]) -> set[str]:
    """Which of `record_ids` still have a waiting or running task (from the counts the
    triggers keep: one indexed read, whatever the number of tasks)."""
    found: set[str] = set()
    for chunk in _chunks(record_ids):
        query = select(record_states.c.record_id).where(
            record_states.c.record_id.in_(chunk),
            record_states.c.state.in_(_UNFINISHED),
            record_states.c.n > 0,
        )
        found.update(conn.execute(query).scalars())
    return found
