"""The audit of user writes: who changed what, when; one row per write, in its transaction."""

from __future__ import annotations

from sqlalchemy import Connection, insert, select

from dirt.db.schema import audit
from dirt.models import Actor, AuditEntry

MAX_TARGET = 2000  # characters of `target` kept (a submission of 100,000 tasks names a few)


def insert_entry(
    conn: Connection, at: float, seq: int, actor: Actor, action: str, target: str
) -> None:
    if len(target) > MAX_TARGET:
        target = target[: MAX_TARGET - 3] + "..."
    conn.execute(
        insert(audit).values(
            at=at,
            seq=seq,
            actor=actor.name[:200],
            via=actor.via[:16],
            client=(actor.client or None) and actor.client[:100],
            action=action[:64],
            target=target,
            request=actor.request,
        )
    )


def entries(conn: Connection, since: float | None, limit: int) -> list[AuditEntry]:
    """The newest `limit` entries at or after `since` (all when None), oldest first."""
    query = select(audit).order_by(audit.c.id.desc()).limit(limit)
    if since is not None:
        query = query.where(audit.c.at >= since)
    rows = list(conn.execute(query))
    return [
        AuditEntry(
            id=row.id,
            at=row.at,
            seq=row.seq,
            actor=row.actor,
            via=row.via,
            client=row.client,
            action=row.action,
            target=row.target,
            request=row.request,
        )
        for row in reversed(rows)
    ]
