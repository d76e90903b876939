"""The CouchDB change feed: records and tasks after a position, one keyset read per table.

A position is (seq, kind, id) in the order of the feed: by the sequence value of the write,
then records before tasks, then id (code-point order). Each row shows once, at its newest
sequence value, as in CouchDB's `_changes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, and_, func, or_, select

from dirt.couch.revs import KINDS, Position
from dirt.db.couch_docs import TABLES, DocRow, columns, doc_row, ordered_id


def _after(conn: Connection, kind: str, table: Table, after: Position) -> Any:
    seq = table.c.seq
    mine = KINDS.index(kind)
    if after.kind is None or mine < KINDS.index(after.kind):
        return seq > after.seq
    if mine > KINDS.index(after.kind):
        return seq >= after.seq
    return and_(seq >= after.seq, or_(seq > after.seq, ordered_id(conn, table) > after.id))


def _filtered(query: Any, table: Table, doc_ids: Sequence[str] | None) -> Any:
    return query if doc_ids is None else query.where(table.c.id.in_(list(doc_ids)))


def _order(row: DocRow) -> tuple[int, int, str]:
    return (row.seq, KINDS.index(row.kind), row.id)


def changes_after(
    conn: Connection,
    after: Position,
    limit: int,
    doc_ids: Sequence[str] | None = None,
    full: bool = False,
) -> list[DocRow]:
    """The first `limit` changes after `after`, oldest first."""
    rows: list[DocRow] = []
    for kind, table in TABLES.items():
        query = select(*columns(kind, full)).where(_after(conn, kind, table, after))
        query = _filtered(query, table, doc_ids)
        query = query.order_by(table.c.seq, ordered_id(conn, table)).limit(limit)
        rows += [doc_row(kind, row, full) for row in conn.execute(query)]
    rows.sort(key=_order)
    return rows[:limit]


def newest_changes(
    conn: Connection, limit: int, doc_ids: Sequence[str] | None = None, full: bool = False
) -> list[DocRow]:
    """The `limit` newest changes, newest first (`descending=true`)."""
    rows: list[DocRow] = []
    for kind, table in TABLES.items():
        query = _filtered(select(*columns(kind, full)), table, doc_ids)
        query = query.order_by(table.c.seq.desc(), ordered_id(conn, table).desc()).limit(limit)
        rows += [doc_row(kind, row, full) for row in conn.execute(query)]
    rows.sort(key=_order, reverse=True)
    return rows[:limit]


def count_after(
    conn: Connection, after: Position, doc_ids: Sequence[str] | None, cap: int
) -> int | None:
    """How many changes follow `after` (CouchDB's `pending`); None when `cap` or more."""
    total = 0
    for kind, table in TABLES.items():
        inner = _filtered(
            select(table.c.id).where(_after(conn, kind, table, after)), table, doc_ids
        )
        total += conn.execute(
            select(func.count()).select_from(inner.limit(cap).subquery())
        ).scalar_one()
    return total if total < cap else None
