"""The change feed: what was written after a given value of the change sequence.

Every write stamps the sequence value of its transaction on the rows it touches, so "what
changed since N" is three indexed range scans (records, tasks, nodes). A row written twice
shows once, with its newest sequence value, as in CouchDB's `_changes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from dirt.db.engine import current_seq
from dirt.db.schema import nodes, records, tasks


@dataclass(slots=True)
class Change:
    seq: int
    type: str
    id: str
    record_id: str | None = None
    name: str | None = None
    state: str | None = None

    def to_doc(self) -> dict[str, Any]:
        # Built by hand: `dataclasses.asdict` copies each field recursively, and an open page's
        # event carries hundreds of changes four times a second.
        doc: dict[str, Any] = {"seq": self.seq, "type": self.type, "id": self.id}
        if self.record_id is not None:
            doc["record_id"] = self.record_id
        if self.name is not None:
            doc["name"] = self.name
        if self.state is not None:
            doc["state"] = self.state
        return doc


def _fetch(conn: Connection, low: int, high: int | None, limit: int | None) -> list[Change]:
    found: list[Change] = []
    sources = (
        ("record", select(records.c.seq, records.c.id), records.c.seq),
        (
            "task",
            select(tasks.c.seq, tasks.c.id, tasks.c.record_id, tasks.c.name, tasks.c.state),
            tasks.c.seq,
        ),
        ("node", select(nodes.c.seq, nodes.c.address), nodes.c.seq),
    )
    for kind, query, seq_column in sources:
        query = query.where(seq_column > low).order_by(seq_column)
        if high is not None:
            query = query.where(seq_column <= high)
        if limit is not None:
            query = query.limit(limit)
        # Rows as plain tuples, in the columns' order above: a Row's mapping costs more than
        # the Change it becomes.
        found.extend(Change(int(row[0]), kind, *row[1:]) for row in conn.execute(query))
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
