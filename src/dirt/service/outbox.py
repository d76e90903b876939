"""The notification outbox as the sender and `dirt notify` see it: claim, finish, list, retry,
purge.

These writes are bookkeeping of the outbox, not changes of records, tasks or nodes: they take
no value of the change sequence, so neither the change feed nor another dispatcher wakes for a
mail that went out.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from sqlalchemy import Connection, Engine

from dirt.db import outbox as outbox_db
from dirt.db import sources as sources_db
from dirt.db.engine import read_transaction, write_transaction
from dirt.db.outbox import Notification
from dirt.service.base import ServiceBase, log
from dirt.service.masters import pid_alive

T = TypeVar("T")


class EngineOutbox:
    """The sender's `OutboxStore` over a store: one short transaction per call."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _write(self, work: Callable[[Connection], T]) -> T:
        with write_transaction(self.engine) as conn:
            return work(conn)

    def claim(self, owner: str, now: float, lease: float, limit: int) -> list[Notification]:
        return self._write(lambda conn: outbox_db.claim_due(conn, owner, now, lease, limit))

    def sent(self, notification_id: int, owner: str, now: float) -> bool:
        return self._write(lambda conn: outbox_db.mark_sent(conn, notification_id, owner, now))

    def failed(self, notification_id: int, owner: str, error: str, now: float) -> bool:
        return self._write(
            lambda conn: outbox_db.mark_failed(conn, notification_id, owner, error, now)
        )

    def retry(self, notification_id: int, owner: str, error: str, next_try: float) -> str | None:
        return self._write(
            lambda conn: outbox_db.retry_later(conn, notification_id, owner, error, next_try)
        )

    def release(self, owner: str, now: float) -> int:
        return self._write(lambda conn: outbox_db.release_claims(conn, owner, now))

    def next_due(self) -> float | None:
        with read_transaction(self.engine) as conn:
            return outbox_db.next_due(conn)


def _dead_here(owner: str) -> bool:
    """A sender named host:pid:token on this host whose process is gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and not (pid.isdigit() and pid_alive(int(pid)))


class Outbox(ServiceBase):
    def outbox_store(self) -> EngineOutbox:
        """What the server's sender claims and finishes rows through."""
        return EngineOutbox(self.engine)

    def notifications(
        self, states: Iterable[str] | None = None, limit: int = 100, record_id: str | None = None
    ) -> list[Notification]:
        """Rows in `states` (default: pending, sending, failed), newest first."""
        chosen = tuple(states) if states is not None else None
        with self._read() as conn:
            if chosen is None:
                return outbox_db.list_notifications(conn, limit=limit, record_id=record_id)
            return outbox_db.list_notifications(conn, chosen, limit, record_id)

    def notification_counts(self) -> dict[str, int]:
        """How many rows are in each state (every state present)."""
        with self._read() as conn:
            found = outbox_db.count_by_state(conn)
        return {state: found.get(state, 0) for state in outbox_db.STATES}

    def retry_notifications(self, ids: Sequence[int] | None, now: float) -> int:
        """Failed rows (all, or those named) go out again; returns how many."""
        with write_transaction(self.engine) as conn:
            return outbox_db.requeue_failed(conn, ids, now)

    def purge_outbox(self, before: float) -> tuple[int, int]:
        """Drop sent and superseded rows, and webhook delivery ids, older than `before`."""
        with write_transaction(self.engine) as conn:
            rows = outbox_db.purge_finished(conn, before)
            deliveries = sources_db.forget_deliveries(conn, before)
        if rows or deliveries:
            log.info("outbox: %d sent row(s) and %d delivery id(s) purged", rows, deliveries)
        return rows, deliveries

    def release_dead_claims(self, now: float) -> int:
        """Rows a sender on this host claimed before its process died go back to pending now,
        not when their lease runs out."""
        with self._read() as conn:
            owners = outbox_db.claim_owners(conn)
        dead = [owner for owner in owners if _dead_here(owner)]
        released = 0
        with write_transaction(self.engine) as conn:
            for owner in dead:
                released += outbox_db.release_claims(conn, owner, now)
        if released:
            log.warning("outbox: %d row(s) a stopped sender had claimed are due again", released)
        return released
