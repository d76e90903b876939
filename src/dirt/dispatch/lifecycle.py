"""The dispatcher's life beyond its steps: stopping (draining within a grace period), waiting out
a store that went away, joining again after another master took over, and shutting down.

A part of `Dispatcher` (dispatch.loop), kept in a module of its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from dirt.dispatch.membership import Membership, Share
from dirt.dispatch.nodes import Nodes
from dirt.dispatch.slots import InFlight, Slots
from dirt.errors import StoreUnavailableError
from dirt.models import Finished, OutputChunk, Task
from dirt.service import Service
from dirt.service.base import new_master_id

if TYPE_CHECKING:
    from dirt.dispatch.connection import Outcome

log = logging.getLogger("dirt")


class Lifecycle:
    """Stopping, outages and takeovers, for `Dispatcher`."""

    # Provided by Dispatcher.
    service: Service
    slots: Slots
    nodes: Nodes
    membership: Membership
    _stopping: threading.Event
    _stop_now: threading.Event
    _stop_by: float
    _outage_since: float | None
    _carried: list[Finished]
    _lost_unwritten: list[tuple[str, str, list[InFlight], list[InFlight]]]
    _outcomes: queue.SimpleQueue[Outcome]
    _pending: list[Task]
    _pending_stale: bool

    if TYPE_CHECKING:

        def _wake_now(self) -> None: ...
        def _collect_outcomes(self, keep_killed: bool = False) -> list[Finished]: ...
        def _take_starts(self) -> list[InFlight]: ...
        def _fold_starts(
            self, starts: list[InFlight], finished: list[Finished]
        ) -> list[InFlight]: ...
        def _handle_lost(self) -> None: ...
        def _take_output(self) -> list[OutputChunk]: ...
        def _stopping_now(self) -> None: ...
        def _announce_start(self) -> None: ...

    # ---- stopping --------------------------------------------------------------------------

    def stop(self, grace: float = 0.0) -> None:
        """Take no new tasks, give back the reserved ones, and hand each node over once
        nothing runs there; running tasks may finish for `grace` seconds, then `run` returns
        the rest to waiting and returns. A later call may shorten the wait (0: at once)."""
        deadline = time.monotonic() + max(0.0, grace)
        if not self._stopping.is_set() or deadline < self._stop_by:
            self._stop_by = deadline
        if grace <= 0:
            self._stop_now.set()
        self._stopping.set()
        self._stopping_now()
        self._wake_now()

    def _finished(self) -> bool:
        """True when the loop should end: stopping, and everything taken stored, or the
        grace period over."""
        if not self._stopping.is_set():
            return False
        if self._stop_now.is_set() or time.monotonic() >= self._stop_by:
            return True
        return (
            self.slots.idle()
            and not self._carried
            and not self._lost_unwritten
            and self._outcomes.empty()
        )

    def _shutdown(self) -> None:
        """Store what finished, return what still runs to waiting, give the nodes and the
        lease back, close every gateway."""
        try:
            finished = self._carried + self._collect_outcomes()
            self._carried = []
            self.nodes.close_all()
            # Closing kills what still runs; those tasks go back to waiting, while outcomes that
            # arrived complete in the meantime are still worth storing.
            finished += self._collect_outcomes(keep_killed=True)
            # Starts not yet written are written too, so the requeue below finds them running.
            starts = self._fold_starts(self._take_starts(), finished)
            self.membership.lease.stop()
            try:
                self.service.dispatch(finished, [f.start for f in starts], [], self._take_output())
                self._handle_lost()
                self.service.release()
                items = [(f.task.id, f.attempt) for f in self.slots.drain()]
                if items:
                    self.service.requeue(items, "dispatcher stopped while it ran")
                    log.info("%d running task(s) returned to waiting", len(items))
                self.service.unregister_dispatcher()
            except StoreUnavailableError as exc:
                log.error(
                    "%s: %d outcome(s) and the tasks and nodes this dispatcher held could not be "
                    "given back; another dispatcher (or the next one started on this machine) "
                    "takes them over once this one's lease runs out, and reruns those tasks",
                    exc,
                    len(finished),
                )
        finally:
            self.nodes.close_all(forget=True)
            self.membership.lease.stop()
            try:
                self.service.dispatcher_stopped()
            except Exception:
                log.exception("could not record that this dispatcher stopped")

    # ---- the store away --------------------------------------------------------------------

    def _store_away(self, exc: StoreUnavailableError) -> None:
        """Wait a little (longer each time) for the store; what was learned stays in memory."""
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.warning("%s; running tasks go on, their outcomes wait in memory; retrying", exc)
        self._stop_now.wait(min(2.0, 0.05 + (now - self._outage_since) / 4))

    def _store_back(self) -> None:
        if self._outage_since is not None:
            log.info(
                "the store is back after %.1f s; what waited in memory is stored",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    def _rejoin(self) -> None:
        """Another master took over what this one held (its lease ran out while it could not
        reach the store): stop what runs here, drop what is held, join again under a new id.

        The other master returned our running tasks to waiting, so what they would still
        store is refused (their claim is gone), and running them on would only crowd their
        nodes, which are another dispatcher's now.
        """
        old = self.service.master_id
        log.error(
            "this dispatcher (%s) was taken over by another while it could not reach the store; "
            "stopping the %d task(s) it still ran (they are waiting again) and joining anew",
            old,
            self.slots.running_total(),
        )
        finished = self._carried + self._collect_outcomes()
        self._carried = []
        # Forgotten too: a closed connection kept would never be opened again, and the node,
        # if it comes back to this dispatcher, would stay offline for good.
        self.nodes.close_all(forget=True)
        self._collect_outcomes(keep_killed=True)
        self._take_starts()
        self.slots.drain()
        self.slots.unhold(lambda _task: False)
        self._lost_unwritten.clear()
        # Stored only if no one moved the task on: the store decides, by the claim.
        self.service.dispatch(finished, [], [], self._take_output())
        self.service.take_over(old, "it was taken over and joins again")
        self.service.master_id = new_master_id()
        self.membership.lease.register()
        self.membership.share = Share()
        self._announce_start()
        self._pending, self._pending_stale = [], True
        log.info("joined again as dispatcher %s", self.service.master_id)
