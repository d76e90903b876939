"""The change feed: what was written after a given value of the change sequence.

Every write stamps the sequence value of its transaction on the rows it touches, so "what
changed since N" is three indexed range scans (records, tasks, nodes). A row written twice
shows once, with its newest sequence value, as in CouchDB's `_changes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, select

from dirt.db.engine import current_seq
from dirt.db.schema import nodes, records, tasks


@dataclass
class Change:
    seq: int
    type: str
    id: str
    record_id: str | None = None
    name: str | None = None
    state: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _fetch(conn: Connection, low: int, high: int | None, limit: int | None) -> list[Change]:
    found: list[Change] = []
    sources = (
        ("record", select(records.c.seq, records.c.id), records.c.seq),
        (
            "task",
            select(tasks.c.seq, tasks.c.id, tasks.c.record_id, tasks.c.name, tasks.c.state),
            tasks.c.seq,
        ),
        ("node", select(nodes.c.seq, nodes.c.address.label("id")), nodes.c.seq),
    )
    for kind, query, seq_column in sources:
        query = query.where(seq_column > low).order_by(seq_column)
        if high is not None:
            query = query.where(seq_column <= high)
        if limit is not None:
            query = query.limit(limit)
        for row in conn.execute(query):
            fields = dict(row._mapping)  # .get() on a RowMapping is slow for absent keys
            found.append(
                Change(
                    seq=int(fields["seq"]),
                    type=kind,
                    id=fields["id"],
                    record_id=fields.get("record_id"),
                    name=fields.get("name"),
                    state=fields.get("state"),
                )
            )
    found.sort(key=lambda c: (c.seq, c.type, c.id))
    return found


def changes_since(conn: Connection, since: int, limit: int = 500) -> tuple[list[Change], int]:
    """Changes with seq > `since`, oldest first, and the seq to ask from next time.

    At most about `limit` changes; a page never ends inside one transaction's changes, so
    asking again from the returned seq misses nothing. When every change was returned, the
    returned seq is the store's current one (writes that touched no row are skipped too).
    """
    # Read the sequence first: every row stamped up to it is committed and visible below.
    now = current_seq(conn)
    found = _fetch(conn, since, None, limit + 1)
    if len(found) <= limit:
        return found, max([now, since] + [c.seq for c in found[-1:]])
    cutoff = found[limit].seq
    kept = [c for c in found if c.seq < cutoff]
    if kept:
        return kept, kept[-1].seq
    # One transaction wrote more than `limit` rows: return all of them.
    whole = _fetch(conn, cutoff - 1, cutoff, None)
    return whole, cutoff
