"""What every channel shares: how a send fails, and the channel's shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dirt.db.outbox import Notification


class SendError(Exception):
    """A notification did not go out; the message says why."""


class TemporaryFailure(SendError):
    """Worth trying again later: no connection, a timeout, a 5xx, an SMTP 4xx, a rate limit."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentFailure(SendError):
    """Never going to work as it is: an HTTP 4xx, an SMTP 5xx, a refused login."""


class Channel(Protocol):
    """Sends one notification of its kind, or raises TemporaryFailure or PermanentFailure."""

    name: str

    def send(self, notification: Notification) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff from `initial` seconds, doubling up to `maximum`, until a
    notification is `give_up_after` seconds old."""

    initial: float = 10.0
    maximum: float = 1800.0
    give_up_after: float = 48 * 3600.0
    lease: float = 600.0  # how long a claimed row is a sender's own: longer than any send

    def delay(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed try."""
        return float(min(self.initial * 2 ** max(attempts - 1, 0), self.maximum))
