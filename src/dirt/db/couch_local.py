"""CouchDB's `_local/{id}` documents (replication checkpoints): revisions `0-N`, no history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from dirt.db.schema import couch_local_docs as local_docs


def get_local(conn: Connection, doc_id: str) -> tuple[int, dict[str, Any]] | None:
    """(revision, body) of a local document, or None."""
    row = conn.execute(
        select(local_docs.c.revision, local_docs.c.body).where(local_docs.c.id == doc_id)
    ).first()
    return None if row is None else (int(row.revision), dict(row.body))


def put_local(
    conn: Connection, doc_id: str, body: dict[str, Any], expected: int, now: float
) -> int | None:
    """Write the document if its revision is `expected` (0: it does not exist yet).

    Returns the new revision, or None when the stored revision is another (a conflict).
    """
    if expected == 0:
        if get_local(conn, doc_id) is not None:
            return None
        conn.execute(insert(local_docs).values(id=doc_id, revision=1, body=body, updated=now))
        return 1
    written = conn.execute(
        update(local_docs)
        .where(local_docs.c.id == doc_id, local_docs.c.revision == expected)
        .values(revision=expected + 1, body=body, updated=now)
    ).rowcount
    return expected + 1 if written == 1 else None


def delete_local(conn: Connection, doc_id: str, expected: int) -> bool:
    query = delete(local_docs).where(local_docs.c.id == doc_id, local_docs.c.revision == expected)
    return conn.execute(query).rowcount == 1
