"""Records and tasks as CouchDB documents: by id, by id range (keyset, code-point order), counts.

Records and tasks share CouchDB's one id space. Should a record and a task have the same id, the
record is the document of that id (the task stays reachable through dirt's own API).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, func, select

from dirt.couch.revs import KINDS
from dirt.db.records import record_from_row
from dirt.db.schema import attachments, couch_server, records, state_counts, tasks
from dirt.db.tasks import task_from_row
from dirt.models import Record, Task

TABLES: dict[str, Table] = {"record": records, "task": tasks}
CHUNK = 500


@dataclass
class DocRow:
    kind: str
    id: str
    revision: int
    seq: int
    model: Record | Task | None = None  # read when the caller wants documents, not only revs


def ordered_id(conn: Connection, table: Table) -> ColumnElement[Any]:
    """The id column compared in code-point order (CouchDB's raw collation) on every backend."""
    column = table.c.id
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def columns(kind: str, full: bool) -> list[Any]:
    table = TABLES[kind]
    return [table] if full else [table.c.id, table.c.revision, table.c.seq]


def doc_row(kind: str, row: Any, full: bool) -> DocRow:
    model: Record | Task | None = None
    if full:
        model = record_from_row(row) if kind == "record" else task_from_row(row)
    return DocRow(kind, row.id, int(row.revision), int(row.seq), model)


def first_of_each_id(rows: list[DocRow], descending: bool = False) -> list[DocRow]:
    """Rows sorted by id (records before tasks of the same id), one per id."""
    rows.sort(key=lambda r: KINDS.index(r.kind))
    rows.sort(key=lambda r: r.id, reverse=descending)
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row.id not in seen:
            seen.add(row.id)
            unique.append(row)
    return unique


def docs_by_id(conn: Connection, ids: Iterable[str], full: bool) -> dict[str, DocRow]:
    wanted = list(dict.fromkeys(ids))
    found: dict[str, DocRow] = {}
    for kind in reversed(KINDS):  # records last: a record wins an id it shares with a task
        table = TABLES[kind]
        for start in range(0, len(wanted), CHUNK):
            query = select(*columns(kind, full)).where(
                table.c.id.in_(wanted[start : start + CHUNK])
            )
            for row in conn.execute(query):
                found[row.id] = doc_row(kind, row, full)
    return found


def revision_of(conn: Connection, kind: str, doc_id: str) -> int | None:
    table = TABLES[kind]
    value = conn.execute(select(table.c.revision).where(table.c.id == doc_id)).scalar()
    return None if value is None else int(value)


def docs_in_range(
    conn: Connection,
    start: str | None,
    end: str | None,
    *,
    inclusive_end: bool,
    descending: bool,
    count: int,
    full: bool,
) -> list[DocRow]:
    """The first `count` documents from `start` towards `end`: one keyset scan per table.

    Each table's first `count` rows hold the first `count` distinct ids of both, so the merge
    is exact.
    """
    rows: list[DocRow] = []
    for kind, table in TABLES.items():
        column = ordered_id(conn, table)
        query = select(*columns(kind, full))
        if start is not None:
            query = query.where(column <= start if descending else column >= start)
        if end is not None:
            if descending:
                query = query.where(column >= end if inclusive_end else column > end)
            else:
                query = query.where(column <= end if inclusive_end else column < end)
        query = query.order_by(column.desc() if descending else column).limit(count)
        rows += [doc_row(kind, row, full) for row in conn.execute(query)]
    return first_of_each_id(rows, descending)[:count]


def count_before(conn: Connection, key: str, descending: bool, cap: int) -> int | None:
    """How many documents sort before `key` (CouchDB's `offset`); None when `cap` or more."""
    total = 0
    for table in TABLES.values():
        column = ordered_id(conn, table)
        inner = select(table.c.id).where(column > key if descending else column < key)
        total += conn.execute(
            select(func.count()).select_from(inner.limit(cap).subquery())
        ).scalar_one()
    return total if total < cap else None


def count_docs(conn: Connection) -> int:
    """Records (kept by a trigger) plus tasks (`state_counts`): no scan."""
    record_count = conn.execute(select(couch_server.c.record_count)).scalar() or 0
    task_count = conn.execute(select(func.coalesce(func.sum(state_counts.c.n), 0))).scalar()
    return int(record_count) + int(task_count or 0)


def server_uuid(conn: Connection) -> str:
    return str(conn.execute(select(couch_server.c.uuid)).scalar_one())


def attachment_bytes(
    conn: Connection, wanted: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], bytes]:
    """The contents of (task id, filename) attachments."""
    found: dict[tuple[str, str], bytes] = {}
    task_ids = sorted({t for t, _ in wanted})
    names = set(wanted)
    for start in range(0, len(task_ids), CHUNK):
        query = select(attachments.c.task_id, attachments.c.filename, attachments.c.content).where(
            attachments.c.task_id.in_(task_ids[start : start + CHUNK])
        )
        for task_id, filename, content in conn.execute(query):
            if (task_id, filename) in names:
                found[(task_id, filename)] = bytes(content)
    return found
