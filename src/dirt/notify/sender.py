"""The sender: claims due outbox rows, sends each through its channel, records what happened.

A row goes out at most once per claim: it is claimed (moved to `sending` under this sender's
name, with a lease) before it is sent, and marked sent, failed or pending-again after. A
server that stops cleanly gives back what it claimed; one that dies leaves its rows to be
claimed again when their leases end, so a restart loses nothing (a crash in the middle of a
send may send that one row again: the only way never to lose one).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from dirt.ci_config import NotifySettings
from dirt.db import outbox
from dirt.db.outbox import NewNotification, Notification
from dirt.notify.base import Channel, PermanentFailure, RetryPolicy, TemporaryFailure
from dirt.notify.email import EmailChannel
from dirt.notify.forges import GithubChannel, GitlabChannel
from dirt.notify.webhook import WebhookChannel

log = logging.getLogger("dirt.notify")


class OutboxStore(Protocol):
    """The writes and reads the sender needs (`Service.outbox_store()` provides them)."""

    def claim(self, owner: str, now: float, lease: float, limit: int) -> list[Notification]: ...

    def sent(self, notification_id: int, owner: str, now: float) -> bool: ...

    def failed(self, notification_id: int, owner: str, error: str, now: float) -> bool: ...

    def retry(
        self, notification_id: int, owner: str, error: str, next_try: float
    ) -> str | None: ...

    def release(self, owner: str, now: float) -> int: ...

    def next_due(self) -> float | None: ...


def channels_from_settings(
    notify: NotifySettings, environ: Mapping[str, str]
) -> dict[str, Channel]:
    """A channel per configured `[notify.*]` table; secrets are read from `environ` per send."""
    channels: dict[str, Channel] = {}
    if notify.email is not None:
        channels["email"] = EmailChannel(notify.email, environ)
    if notify.github is not None:
        channels["github"] = GithubChannel(notify.github, environ)
    if notify.gitlab is not None:
        channels["gitlab"] = GitlabChannel(notify.gitlab, environ)
    if notify.webhook:
        channels["webhook"] = WebhookChannel(notify.webhook, environ)
    return channels


def policy_from_settings(notify: NotifySettings) -> RetryPolicy:
    return RetryPolicy(notify.backoff_initial, notify.backoff_max, notify.give_up_after)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


class Sender:
    """Sends due notifications; `send_due` is one pass, `run` loops until stopped."""

    def __init__(
        self,
        store: OutboxStore,
        channels: Mapping[str, Channel],
        policy: RetryPolicy | None = None,
        *,
        owner: str | None = None,
        workers: int = 4,
        batch: int = 20,
        idle: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.channels = dict(channels)
        self.policy = policy or RetryPolicy()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.batch = batch
        self.idle = idle
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dirt-notify")
        self._wake = threading.Event()

    def wake(self) -> None:
        """Look for due rows now (the service calls this after a commit that wrote some)."""
        self._wake.set()

    def send_due(self, now: float | None = None) -> int:
        """Claim the rows due at `now` (default: the clock), send them, record the outcomes.
        Returns how many were handled."""
        claimed = self.store.claim(
            self.owner, self.clock() if now is None else now, self.policy.lease, self.batch
        )
        results = [self._pool.submit(self._deliver, n, now) for n in claimed]
        for result in results:
            result.result()
        return len(claimed)

    def _deliver(self, notification: Notification, now: float | None) -> None:
        what = f"notification {notification.id} ({notification.kind} by {notification.channel})"
        channel = self.channels.get(notification.channel)
        try:
            if channel is None:
                raise PermanentFailure(f"[notify.{notification.channel}] is not configured")
            channel.send(notification)
        except PermanentFailure as exc:
            log.error("%s failed for good: %s", what, exc)
            self.store.failed(notification.id, self.owner, str(exc), self._now(now))
            return
        except Exception as exc:  # TemporaryFailure, or a channel's bug: try again later
            if not isinstance(exc, TemporaryFailure):
                log.exception("%s: the channel raised", what)
            self._later(notification, exc, now, what)
            return
        log.info("%s sent", what)
        self.store.sent(notification.id, self.owner, self._now(now))

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    def _later(
        self, notification: Notification, exc: Exception, now: float | None, what: str
    ) -> None:
        at = self._now(now)
        wait = self.policy.delay(notification.attempts)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, float(retry_after))
        age = at + wait - notification.created
        if age > self.policy.give_up_after:
            reason = (
                f"gave up after {notification.attempts} attempt(s) over "
                f"{_hours(at - notification.created)}: {exc}"
            )
            log.error("%s %s", what, reason)
            self.store.failed(notification.id, self.owner, reason, at)
            return
        log.warning(
            "%s: attempt %d failed, trying again in %.0f s: %s",
            what,
            notification.attempts,
            wait,
            exc,
        )
        self.store.retry(notification.id, self.owner, str(exc), at + wait)

    def run(self, stop: threading.Event) -> None:
        """Send until `stop` is set; sleeps until the next row is due, a wake, or `idle` s
        (rows other servers write are found then)."""
        try:
            while not stop.is_set():
                try:
                    if self.send_due():
                        continue
                    due = self.store.next_due()
                except Exception:  # the store is away for a moment: never stop sending
                    log.exception("notification sender: the store failed; trying again")
                    due = None
                wait = self.idle if due is None else min(self.idle, max(0.0, due - self.clock()))
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            self.close()

    def close(self) -> None:
        """Give back claimed rows not sent yet and stop the workers."""
        self._pool.shutdown(wait=True)
        try:
            self.store.release(self.owner, self.clock())
        except Exception:
            log.exception("notification sender: could not give back its claims")


def send_once(channels: Mapping[str, Channel], item: NewNotification) -> str | None:
    """Send `item` now, outside the outbox (`dirt notify test`): None, or why it failed."""
    channel = channels.get(item.channel)
    if channel is None:
        return f"[notify.{item.channel}] is not configured"
    notification = Notification(
        id=0,
        kind=item.kind,
        channel=item.channel,
        payload=item.payload,
        state=outbox.SENDING,
        attempts=1,
        created=time.time(),
        next_try=time.time(),
        target=item.target,
    )
    try:
        channel.send(notification)
    except (TemporaryFailure, PermanentFailure) as exc:
        return str(exc)
    return None
