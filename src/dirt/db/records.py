"""Records: insert, look up, list newest first with task counts per state."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select

from dirt.db.schema import records
from dirt.models import Record


def epoch_seconds(value: float) -> float | int:
    # Epoch seconds that came in as integers go back out as integers.
    return int(value) if float(value).is_integer() else value


def record_from_row(row: Any) -> Record:
    return Record(
        id=row.id,
        description=row.description,
        created=epoch_seconds(row.created),
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
