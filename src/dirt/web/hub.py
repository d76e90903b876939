"""The change hub of a web process: the newest change it knows of, and the live feed's events.

`seq` is the newest committed change sequence value known here. Writes made by this process
reach it at once through `Service.add_listener`; on PostgreSQL, writes of other processes that
wake (a submission, a cancel, a node change: see `Service._write`) reach it at once through
NOTIFY (`Service.watch`); the rest (a dispatcher's progress, and everything on SQLite) are seen by
polling the sequence every `poll_interval` seconds, or every `EAGER_POLL` seconds while someone
waits `eagerly` (an idle pull-mode agent picks up a task submitted elsewhere within tens of
milliseconds).

The events of `/events` are made here, once for every open stream: at most every
`event_interval` (a page refreshes at most four times a second anyway), one thread reads what
changed since the last event and keeps it, serialised, in a ring of recent events. A stream
sends the events past the point it has reached: fifty open pages cost one query and one
serialisation per event, not fifty. A stream that starts before the ring (a reconnect with an
old Last-Event-ID) catches up from the store first. While no stream is open, no event is made
(a busy agent writes once per task, and no one would read them): the ring is emptied, so a
stream that comes back catches up from the store.

Waiters are asyncio events, so an open page holds no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dirt.service import Service
from dirt.web.common import dumps

log = logging.getLogger("dirt.web")

SSE_MAX_CHANGES = 500
EVENT_RING = 256
EAGER_POLL = 0.01  # seconds between polls of the sequence while an agent waits for work
SEQ, EVENTS = "seq", "events"  # what a waiter waits for (see `ChangeHub.wait`)


@dataclass(frozen=True)
class Event:
    """The changes after seq `start` up to `end`, as one SSE `change` event."""

    start: int
    end: int
    text: bytes  # encoded once here, written as is to every open stream


def change_event(service: Service, since: int) -> tuple[Event | None, int]:
    """The event for what was written after `since` (None when nothing was) and the seq it
    reaches. One huge transaction (a 100,000-task submission) is sent in part: the page
    refreshes on "truncated" whatever the changes were."""
    changes, last = service.changes_since(since, SSE_MAX_CHANGES)
    if not changes:
        return None, last
    payload: dict[str, Any] = {
        "seq": last,
        "changes": [c.to_doc() for c in changes[:SSE_MAX_CHANGES]],
    }
    if len(changes) > SSE_MAX_CHANGES:
        payload["truncated"] = True
    text = b"id: %d\nevent: change\ndata: %s\n\n" % (last, dumps(payload))
    return Event(since, last, text), last


class ChangeHub:
    def __init__(
        self, service: Service, poll_interval: float = 0.1, event_interval: float = 0.25
    ) -> None:
        self.service = service
        self.poll_interval = poll_interval
        self.event_interval = event_interval
        self.seq = service.current_seq()
        self.event_seq = self.seq  # where the newest event ends
        self.local_seq = self.seq  # the newest write of this process or fresh read (see seen)
        self._events: deque[Event] = deque(maxlen=EVENT_RING)
        self._lock = threading.Lock()
        # Who waits for the sequence to move, and who for the next event (an open page): a
        # dispatcher's progress moves the sequence ten times a second, and fifty open pages
        # need waking only when their event is made.
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {
            SEQ: set(),
            EVENTS: set(),
        }
        self._stopping = threading.Event()
        self._nudge = threading.Event()
        self._eager = 0  # waiters that want writes of other processes seen at once
        self._streams = 0  # open event streams (events are made only while there are some)
        self._next_event = 0.0  # monotonic time before which no event is made
        self._thread: threading.Thread | None = None
        service.add_listener(self._written_here)
        service.watch(self._notified)

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="dirt-web-changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._nudge.set()
        self._wake(SEQ, EVENTS)
        if self._thread is not None:
            self._thread.join(5)

    def _written_here(self, seq: int) -> None:
        """A write of this process committed: known at once (the next read sees it), its event
        made as soon as one is due (not one wake-up of the poll per write: a busy agent writes
        once per task)."""
        self._advance(seq, local=True)
        if self._streams and time.monotonic() >= self._next_event:
            self._nudge.set()

    def _notified(self, seq: int | None, _topic: str | None) -> None:
        """NOTIFY from another process (on the service's listening thread); None: notices may
        have been missed while the store was away, so the poll reads the sequence now."""
        if seq is not None:
            self._advance(seq)
        if seq is None or self._streams:
            self._nudge.set()

    def seen(self, seq: int) -> None:
        """A reader saw the store at `seq`: known here from now on."""
        self._advance(seq, local=True)
        if self._streams and seq > self.event_seq:
            self._nudge.set()

    def _advance(self, seq: int, local: bool = False) -> None:
        with self._lock:
            if local and seq > self.local_seq:
                self.local_seq = seq
            if seq <= self.seq:
                return
            self.seq = seq
        self._wake(SEQ)

    @property
    def shown_seq(self) -> int:
        """The oldest sequence value a kept answer may be from: what this process wrote or read
        fresh, and what the open pages were told of. While pages are open the events lead,
        so a busy store is read for answers at most once per event (four times a second), not
        at every poll, and a page told of a change never gets an answer from before it; while
        none is open, the newest value known."""
        if not self._streams:
            return self.seq
        return max(self.local_seq, self.event_seq)

    def eagerly(self) -> contextlib.AbstractContextManager[None]:
        """While inside, the sequence is polled every EAGER_POLL seconds (one indexed read)."""
        return self._counted("_eager")

    def streaming(self) -> contextlib.AbstractContextManager[None]:
        """While inside, events are made (an open event stream reads them)."""
        return self._counted("_streams")

    @contextlib.contextmanager
    def _counted(self, counter: str) -> Iterator[None]:
        """One more of `counter` while inside; the poll thread looks again at once."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)
        self._nudge.set()
        try:
            yield
        finally:
            with self._lock:
                setattr(self, counter, getattr(self, counter) - 1)

    def _skip_events(self) -> None:
        """No stream reads events: none is made, and the kept ones go (they would leave a gap)."""
        with self._lock:
            self._events.clear()
            self.event_seq = self.seq
        self._wake(EVENTS)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            wait = EAGER_POLL if self._eager else self.poll_interval
            if self._streams and self.event_seq < self.seq:  # an event to make: wake when due
                wait = min(wait, max(0.0, self._next_event - time.monotonic()))
            self._nudge.wait(wait)
            self._nudge.clear()
            if self._stopping.is_set():
                return
            try:
                self._advance(self.service.current_seq())
                now = time.monotonic()
                # Writes in a burst make one event per interval, not one per write: a page
                # refreshes at most that often anyway.
                if self.event_seq < self.seq and not self._streams:
                    self._skip_events()
                elif self.event_seq < self.seq and now >= self._next_event:
                    self._make_events()
                    self._next_event = now + self.event_interval
            except Exception as exc:  # the store may be busy or gone for a moment
                log.debug("change poll failed: %s", exc)

    def _make_events(self) -> None:
        while self.event_seq < self.seq and not self._stopping.is_set():
            event, last = change_event(self.service, self.event_seq)
            if last <= self.event_seq:
                return
            with self._lock:
                if event is not None:
                    self._events.append(event)
                self.event_seq = last
            self._wake(EVENTS)

    def _wake(self, *kinds: str) -> None:
        """Wake the waiters of these kinds: one call into each event loop, however many wait
        there (each call writes to the loop's wake-up pipe)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
        with self._lock:
            for kind in kinds:
                for loop, event in self._waiters[kind]:
                    by_loop.setdefault(loop, []).append(event)
        for loop, events in by_loop.items():
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(_set_all, events)

    def events_after(self, seq: int) -> list[Event] | None:
        """The kept events that reach past `seq`, oldest first; None when `seq` is older than
        the oldest kept event (the stream must catch up from the store)."""
        with self._lock:
            oldest = self._events[0].start if self._events else self.event_seq
            if seq < oldest:
                return None
            return [e for e in self._events if e.end > seq]

    def shown_through(self, seq: int) -> int:
        """Where a stream that has every kept event reaching past `seq` stands: the newest
        event's end when none reaches past `seq` (writes that show nothing, such as a lease or
        an announcement, move the sequence without an event), else `seq`."""
        with self._lock:
            if any(e.end > seq for e in self._events):
                return seq
            return max(seq, self.event_seq)

    async def wait(self, passed: Callable[[], bool], timeout: float, kind: str = SEQ) -> None:
        """Wait until `passed()` holds (checked whenever the sequence moves, or with `kind`
        EVENTS whenever an event is made), `timeout`, or stop."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        item = (loop, event)
        with self._lock:
            self._waiters[kind].add(item)  # before the first check: no wake-up falls in between
        try:
            deadline = loop.time() + timeout
            while not self.stopped and not passed():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
                event.clear()
        finally:
            with self._lock:
                self._waiters[kind].discard(item)

    async def wait_beyond(self, seq: int, timeout: float) -> int:
        """Wait until the sequence passes `seq` (or `timeout`, or stop); the newest value."""
        await self.wait(lambda: self.seq > seq, timeout)
        return self.seq

    async def wait_event_beyond(self, seq: int, timeout: float) -> None:
        """Wait until an event reaches past `seq` (or `timeout`, or stop)."""
        await self.wait(lambda: self.event_seq > seq, timeout, EVENTS)


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()
