"""Records: insert, look up, list newest first with task counts per state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select

from dirt.db.schema import records, tasks
from dirt.models import Record, TaskState


def _number(value: float) -> float | int:
    # Epoch seconds that came in as integers go back out as integers.
    return int(value) if float(value).is_integer() else value


def record_from_row(row: Any) -> Record:
    return Record(
        id=row.id,
        description=row.description,
        created=_number(row.created),
        extra=row.extra or {},
        seq=row.seq,
    )


def insert_records(conn: Connection, items: Sequence[Record], seq: int) -> None:
    if not items:
        return
    conn.execute(
        insert(records),
        [
            {
                "id": r.id,
                "description": r.description,
                "created": r.created,
                "extra": r.extra,
                "seq": seq,
            }
            for r in items
        ],
    )


def get_record(conn: Connection, record_id: str) -> Record | None:
    row = conn.execute(select(records).where(records.c.id == record_id)).first()
    return record_from_row(row) if row else None


def existing_record_ids(conn: Connection, ids: Iterable[str]) -> set[str]:
    wanted = list(set(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(conn.execute(select(records.c.id).where(records.c.id.in_(chunk))).scalars())
    return found


def list_records(
    conn: Connection,
    limit: int = 50,
    before: tuple[float, str] | None = None,
    search: str | None = None,
) -> list[Record]:
    """Newest first; `before` is the (created, id) of the last record of the previous page."""
    query = select(records).order_by(records.c.created.desc(), records.c.id.desc()).limit(limit)
    if before is not None:
        created, record_id = before
        query = query.where(
            or_(
                records.c.created < created,
                and_(records.c.created == created, records.c.id < record_id),
            )
        )
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                records.c.id.like(pattern, escape="\\"),
                records.c.description.like(pattern, escape="\\"),
            )
        )
    return [record_from_row(row) for row in conn.execute(query)]


def task_counts(conn: Connection, record_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """For each record id, the number of its tasks in each state (every state present)."""
    counts = {rid: {state.value: 0 for state in TaskState} for rid in record_ids}
    if not record_ids:
        return counts
    query = (
        select(tasks.c.record_id, tasks.c.state, func.count())
        .where(tasks.c.record_id.in_(list(record_ids)))
        .group_by(tasks.c.record_id, tasks.c.state)
    )
    for record_id, state, n in conn.execute(query):
        counts[record_id][state] = n
    return counts
