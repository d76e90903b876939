"""The notification outbox: rows written with the change that caused them, claimed by senders.

Claiming (`claim_due`) moves due rows to `sending` under the sender's name until a lease runs
out, in one transaction (on PostgreSQL the candidate rows are locked with SKIP LOCKED; SQLite
writers hold the database lock), so two senders never hold one row. A sender that dies leaves
its rows to be claimed again when the lease ends (`release_claims` gives them back at once on a
clean stop). Rows sharing a `key` (one commit status: forge, repository, sha, context) go out in
order: a row waits while an older one with its key is being sent, and a newer row supersedes an
older one that is still waiting, since only the newest status matters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select, update

from dirt.db.ci_schema import notifications as table

PENDING, SENDING, SENT, FAILED, SUPERSEDED = "pending", "sending", "sent", "failed", "superseded"
STATES = (PENDING, SENDING, SENT, FAILED, SUPERSEDED)


@dataclass
class NewNotification:
    """A notification to write; `payload` is all the channel needs except its secrets."""

    kind: str
    channel: str
    payload: dict[str, Any]
    target: str = ""
    key: str | None = None
    record_id: str | None = None
    task_id: str | None = None


@dataclass
class Notification:
    id: int
    kind: str
    channel: str
    payload: dict[str, Any]
    state: str
    attempts: int
    created: float
    next_try: float
    target: str = ""
    key: str | None = None
    record_id: str | None = None
    task_id: str | None = None
    claimed_by: str | None = None
    claimed_until: float | None = None
    last_error: str | None = None
    finished: float | None = None

    def to_doc(self) -> dict[str, Any]:
        """As `dirt notify list --json` and the API show it (the payload left out)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "channel": self.channel,
            "target": self.target or None,
            "record_id": self.record_id,
            "task_id": self.task_id,
            "state": self.state,
            "attempts": self.attempts,
            "created": self.created,
            "next_try": self.next_try if self.state == PENDING else None,
            "last_error": self.last_error,
            "finished": self.finished,
        }


def _from_row(row: Any) -> Notification:
    return Notification(
        id=row.id,
        kind=row.kind,
        channel=row.channel,
        payload=row.payload,
        state=row.state,
        attempts=row.attempts,
        created=row.created,
        next_try=row.next_try,
        target=row.target,
        key=row.key,
        record_id=row.record_id,
        task_id=row.task_id,
        claimed_by=row.claimed_by,
        claimed_until=row.claimed_until,
        last_error=row.last_error,
        finished=row.finished,
    )


def insert_notifications(
    conn: Connection, items: Sequence[NewNotification], now: float
) -> list[int]:
    """Write `items` as pending, due now; older waiting rows with one of their keys are
    superseded. Returns the new ids."""
    if not items:
        return []
    keys = sorted({i.key for i in items if i.key is not None})
    for start in range(0, len(keys), 500):
        conn.execute(
            update(table)
            .where(table.c.key.in_(keys[start : start + 500]), table.c.state == PENDING)
            .values(state=SUPERSEDED, finished=now, last_error="a newer status replaced it")
        )
    ids = []
    for item in items:
        result = conn.execute(
            insert(table)
            .values(
                kind=item.kind,
                channel=item.channel,
                target=item.target,
                key=item.key,
                record_id=item.record_id,
                task_id=item.task_id,
                payload=item.payload,
                state=PENDING,
                attempts=0,
                created=now,
                next_try=now,
            )
            .returning(table.c.id)
        )
        ids.append(int(result.scalar_one()))
    return ids


def _claimable(now: float) -> Any:
    lease_ended = and_(table.c.state == SENDING, table.c.claimed_until < now)
    return or_(and_(table.c.state == PENDING, table.c.next_try <= now), lease_ended)


def claim_due(
    conn: Connection, owner: str, now: float, lease: float, limit: int = 20
) -> list[Notification]:
    """Claim up to `limit` due rows for `owner` until `now + lease`, oldest due first."""
    earlier = table.alias("earlier")
    in_flight = exists().where(
        earlier.c.key == table.c.key, earlier.c.state == SENDING, earlier.c.id < table.c.id
    )
    candidates = (
        select(table.c.id)
        .where(_claimable(now), ~in_flight)
        .order_by(table.c.next_try, table.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=table)
    )
    ids = list(conn.execute(candidates).scalars())
    if not ids:
        return []
    claimed = conn.execute(
        update(table)
        .where(table.c.id.in_(ids), _claimable(now))
        .values(
            state=SENDING,
            claimed_by=owner,
            claimed_until=now + lease,
            attempts=table.c.attempts + 1,
        )
        .returning(*table.c)
    )
    return sorted((_from_row(r) for r in claimed), key=lambda n: (n.next_try, n.id))


def _mine(notification_id: int, owner: str) -> Any:
    return and_(
        table.c.id == notification_id, table.c.state == SENDING, table.c.claimed_by == owner
    )


def mark_sent(conn: Connection, notification_id: int, owner: str, now: float) -> bool:
    """The row went out. False when `owner` no longer held it (its lease ran out)."""
    result = conn.execute(
        update(table)
        .where(_mine(notification_id, owner))
        .values(state=SENT, finished=now, claimed_by=None, claimed_until=None, last_error=None)
    )
    return result.rowcount == 1


def mark_failed(conn: Connection, notification_id: int, owner: str, error: str, now: float) -> bool:
    """The row can never go out (or was retried for too long): final, with the reason."""
    result = conn.execute(
        update(table)
        .where(_mine(notification_id, owner))
        .values(state=FAILED, finished=now, claimed_by=None, claimed_until=None, last_error=error)
    )
    return result.rowcount == 1


def retry_later(
    conn: Connection, notification_id: int, owner: str, error: str, next_try: float
) -> str | None:
    """Back to pending until `next_try`, or superseded when a newer row shares its key.
    Returns the new state, or None when `owner` no longer held the row."""
    row = conn.execute(select(table.c.key).where(_mine(notification_id, owner))).first()
    if row is None:
        return None
    newer = (
        row.key is not None
        and conn.execute(
            select(table.c.id).where(table.c.key == row.key, table.c.id > notification_id).limit(1)
        ).first()
    )
    state = SUPERSEDED if newer else PENDING
    conn.execute(
        update(table)
        .where(_mine(notification_id, owner))
        .values(
            state=state,
            next_try=next_try,
            claimed_by=None,
            claimed_until=None,
            last_error=error,
            finished=next_try if newer else None,
        )
    )
    return state


def release_claims(conn: Connection, owner: str, now: float) -> int:
    """A stopping sender gives back the rows it claimed but did not send."""
    result = conn.execute(
        update(table)
        .where(table.c.state == SENDING, table.c.claimed_by == owner)
        .values(state=PENDING, next_try=now, claimed_by=None, claimed_until=None)
    )
    return int(result.rowcount)


def next_due(conn: Connection) -> float | None:
    """When a row next becomes claimable (a retry comes due or a lease runs out), or None."""
    pending = select(func.min(table.c.next_try)).where(table.c.state == PENDING)
    leased = select(func.min(table.c.claimed_until)).where(table.c.state == SENDING)
    times = [conn.execute(q).scalar_one_or_none() for q in (pending, leased)]
    found = [t for t in times if t is not None]
    return min(found) if found else None


def get_notification(conn: Connection, notification_id: int) -> Notification | None:
    row = conn.execute(select(table).where(table.c.id == notification_id)).first()
    return _from_row(row) if row else None


def list_notifications(
    conn: Connection,
    states: Iterable[str] = (PENDING, SENDING, FAILED),
    limit: int = 100,
    record_id: str | None = None,
) -> list[Notification]:
    """Rows in `states`, newest first (`dirt notify list`)."""
    query = select(table).where(table.c.state.in_(list(states)))
    if record_id is not None:
        query = query.where(table.c.record_id == record_id)
    query = query.order_by(table.c.id.desc()).limit(limit)
    return [_from_row(r) for r in conn.execute(query)]


def count_by_state(conn: Connection) -> dict[str, int]:
    query = select(table.c.state, func.count()).group_by(table.c.state)
    return {state: int(n) for state, n in conn.execute(query)}


def requeue_failed(conn: Connection, ids: Sequence[int] | None, now: float) -> int:
    """Failed rows (all, or those named) go out again, counted as new (attempts and the
    retry window start over)."""
    query = update(table).where(table.c.state == FAILED)
    if ids is not None:
        query = query.where(table.c.id.in_(list(ids)))
    result = conn.execute(
        query.values(state=PENDING, attempts=0, next_try=now, finished=None, created=now)
    )
    return int(result.rowcount)


def purge_finished(conn: Connection, before: float) -> int:
    """Delete sent and superseded rows that finished before `before`."""
    result = conn.execute(
        delete(table).where(table.c.state.in_([SENT, SUPERSEDED]), table.c.finished < before)
    )
    return int(result.rowcount)


def claim_owners(conn: Connection) -> list[str]:
    """The senders that hold rows now (to find those whose process is gone)."""
    query = (
        select(table.c.claimed_by)
        .where(table.c.state == SENDING, table.c.claimed_by.is_not(None))
        .distinct()
    )
    return [owner for owner in conn.execute(query).scalars() if owner]
