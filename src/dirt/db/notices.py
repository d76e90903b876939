"""The reads the service makes to plan notifications, inside the write transaction of the
change: the tasks a change touched, their records, and which records still have work left."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, select

from dirt.db.records import record_from_row
from dirt.db.schema import record_states, records, tasks
from dirt.db.tasks import task_from_row
from dirt.models import Record, Task, TaskState

T = TypeVar("T")
_CHUNK = 500
_UNFINISHED = (TaskState.WAITING.value, TaskState.RUNNING.value)


def _chunks(ids: Iterable[str]) -> Iterable[list[str]]:
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), _CHUNK):
        yield wanted[start : start + _CHUNK]


def _by_id(
    conn: Connection, table: Table, from_row: Callable[[Any], T], ids: Iterable[str]
) -> dict[str, T]:
    found: dict[str, T] = {}
    for chunk in _chunks(ids):
        for row in conn.execute(select(table).where(table.c.id.in_(chunk))):
            found[row.id] = from_row(row)
    return found


def tasks_by_id(conn: Connection, task_ids: Iterable[str]) -> dict[str, Task]:
    return _by_id(conn, tasks, task_from_row, task_ids)


def records_by_id(conn: Connection, record_ids: Iterable[str]) -> dict[str, Record]:
    return _by_id(conn, records, record_from_row, record_ids)


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
