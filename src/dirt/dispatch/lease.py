"""This dispatcher's lease in the store, renewed on a thread of its own.

The lease says "this master is alive" to the others: it is renewed every third of its length,
on this thread so that a slow step of the loop never lets it run out. Locally it answers two
questions, both by the monotonic clock:

- `valid`: is the lease surely still ours? Only then may a task start: once it may have run
  out, another master may take the task's claim (and its node) over at any moment. A master
  that cannot renew (the store is away) therefore starts nothing new and lets what runs run.
- `settled`: has it been renewed without a gap for a whole lease? Only then may this master
  judge another dead by its lease: after an outage of the store every lease has run out, and
  each master must first get the chance to renew its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dirt.errors import StoreUnavailableError
from dirt.service import Service

log = logging.getLogger("dirt")

Status = Callable[[], str]  # the state the row shows: running, or draining


class Lease:
    def __init__(
        self, service: Service, seconds: float, status: Status, on_lost: Callable[[], None]
    ) -> None:
        self.service = service
        self.seconds = seconds
        self.interval = seconds / 3
        # Launching a task takes a moment after `valid` said yes; the store's clock may run a
        # little faster than ours.
        self.margin = min(1.0, seconds / 10)
        self._status = status
        self._on_lost = on_lost
        self._valid_until = 0.0
        self._gap_free_since: float | None = None
        self._stopping = threading.Event()
        self._kick = threading.Event()
        self.taken_over = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None

    # ---- questions (any thread) ------------------------------------------------------------

    def valid(self) -> bool:
        return time.monotonic() < self._valid_until and not self.taken_over.is_set()

    def settled(self) -> bool:
        since = self._gap_free_since
        return since is not None and time.monotonic() - since >= self.seconds

    # ---- lifecycle (the loop's thread) -----------------------------------------------------

    def register(self) -> None:
        """Add this dispatcher's row (ConfigError when the store refuses a second machine)
        and keep it renewed."""
        began = time.monotonic()
        self.service.register_dispatcher(self.seconds)
        self._valid_until = began + self.seconds - self.margin
        self._gap_free_since = began
        self.taken_over.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dirt-lease", daemon=True)
            self._thread.start()

    def renew_now(self) -> None:
        self._kick.set()

    def stop(self) -> None:
        self._stopping.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(10)

    # ---- the renewing thread ---------------------------------------------------------------

    def _run(self) -> None:
        wait = self.interval
        while not self._stopping.is_set():
            self._kick.wait(wait)
            self._kick.clear()
            if self._stopping.is_set():
                return
            if self.taken_over.is_set():
                wait = self.interval  # until the loop registers again
                continue
            wait = self._renew()

    def _renew(self) -> float:
        """Renew once; returns how long to wait before the next try."""
        began = time.monotonic()
        try:
            ours = self.service.renew_lease(self.seconds, self._status())
        except Exception as exc:  # the store is away, or something odd: keep trying
            self._gap_free_since = None
            if self._failing_since is None:
                self._failing_since = began
                why = str(exc) if isinstance(exc, StoreUnavailableError) else repr(exc)
                log.warning(
                    "cannot renew this dispatcher's lease (%s); no new task starts until it is "
                    "renewed, running ones go on",
                    why,
                )
            # Soon after the first failure, then every third of the lease.
            return min(self.interval, 0.2 + (began - self._failing_since) / 2)
        if not ours:
            self.taken_over.set()
            self._on_lost()
            return self.interval
        self._valid_until = began + self.seconds - self.margin
        if self._gap_free_since is None:
            self._gap_free_since = began
        if self._failing_since is not None:
            log.info("lease renewed again after %.1f s", began - self._failing_since)
            self._failing_since = None
        return self.interval
