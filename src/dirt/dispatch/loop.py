"""The serve loop: wake on change, reserve waiting tasks, store what the nodes did.

One thread owns the loop and every store write it makes. When a task finishes, the node's
execnet receiver thread frees its slot and at once starts the next reserved task that node can
run, then queues the outcome and wakes the loop; the loop writes starts, outcomes and new
reservations in one transaction. A step costs mostly the same however much it writes, so while
busy the loop lets outcomes gather (group commit, see `_gather`): the writing waits, the running
never does.

Output a running task writes arrives on the same receiver threads and is queued for the loop,
which stores it in its next step (with the outcomes that came before it): so it is readable
about as soon as it arrives. While more than MAX_QUEUED_OUTPUT bytes wait to be stored, a
receiver thread waits for room, and its node is paced to the store's speed.

The state both kinds of thread touch (the slot bookkeeping in `Slots`, the driven nodes and
their connections in `Nodes`) sits under one lock, `Dispatcher.lock`, and changes only through
their methods, one per transition.

Several dispatchers may share a store (see dispatch.membership): each holds a lease, drives its
share of the nodes and reserves only tasks those can run. When the store is away, the loop keeps
what it learned (outcomes, starts, lost nodes) in memory and writes it once the store is back;
tasks start only while the lease is surely ours (`Lease.valid`).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time

from dirt.config import Settings
from dirt.dispatch.batch_driver import BatchDriver
from dirt.dispatch.connection import Outcome
from dirt.dispatch.launching import Launching
from dirt.dispatch.lifecycle import Lifecycle
from dirt.dispatch.membership import Membership
from dirt.dispatch.nodes import Nodes
from dirt.dispatch.order import heads
from dirt.dispatch.outcome import judge
from dirt.dispatch.reasons import HEARTBEAT_S
from dirt.dispatch.select import NodeView, key_of, to_reserve
from dirt.dispatch.slots import InFlight, Slots
from dirt.errors import DirtError, StoreUnavailableError
from dirt.models import DispatcherInfo, NodeRuntime, OutputChunk, Task
from dirt.service import Finished, Service
from dirt.service.base import NODES, TASKS
from dirt.service.masters import DRAINING, RUNNING

log = logging.getLogger("dirt")

WINDOW = 128  # waiting tasks kept in memory (or more, to reserve more); refilled as reserved
# Tasks reserved beyond the free slots, so a slot that frees is refilled at once. Reserved tasks
# stay waiting (and can be cancelled); any node of this dispatcher can take them. With other
# dispatchers running, at most as many as its own slots, so that one does not hold tasks the
# others' idle nodes could run.
PREFETCH = 64
# Group commit while busy: a step waits STEP_GAP after the last one began (or longer, up to
# MAX_STEP_GAP, so that steps take at most STEP_SHARE of the loop's time: on a slow or loaded
# machine each step writes more), then until BATCH outcomes wait or MAX_STEP_GAP has passed.
STEP_GAP = 0.005  # seconds
BATCH = 32
MAX_STEP_GAP = 0.05
STEP_SHARE = 0.2
# While tasks move, what the dispatcher announces (slots in use, where each node's queue stands)
# is written at most this often; node changes at once (see _announcement).
ANNOUNCE_S = 0.2
MAX_QUEUED_OUTPUT = 16 << 20  # bytes of output waiting to be stored before receivers wait
# With PostgreSQL's notifications the change sequence is read this often only, in case one was
# missed; SQLite's readers poll it every `poll_interval`.
SAFETY_POLL_S = 1.0


class Dispatcher(Launching, Lifecycle):
    """Runs waiting tasks on nodes until stopped."""

    def __init__(self, service: Service, settings: Settings | None = None) -> None:
        self.service = service
        self.settings = settings or service.settings
        self._wake = threading.Event()
        # Set with _wake for news that should not wait for outcomes to gather: a node connected
        # or lost, another thread's commit (a submission, a cancel), a stop.
        self._urgent = threading.Event()
        self._stopping = threading.Event()
        self._stop_by = 0.0  # while stopping: when running tasks stop waiting (monotonic)
        self._stop_now = threading.Event()
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._lost: queue.SimpleQueue[tuple[str, list[str], str]] = queue.SimpleQueue()
        self._output: list[OutputChunk] = []
        self._output_bytes = 0
        self._output_room = threading.Condition()
        # Learned, not yet stored (the store was away): outcomes, and lost nodes' tasks.
        self._carried: list[Finished] = []
        self._lost_unwritten: list[tuple[str, str, list[InFlight], list[InFlight]]] = []
        # The one lock over what receiver threads and the loop share: see Slots and Nodes.
        self.lock = threading.RLock()
        self.order = self.settings.dispatch.order
        self.slots = Slots(self.lock, key_of(self.order))
        self.nodes = Nodes(
            self.lock,
            service,
            self.settings,
            self._on_done,
            self._on_lost,
            self._wake_now,
            self._on_output,
        )
        # Loop-thread state below; the flags are also raised by other threads' commits.
        self._check_cancels = True
        self._pending: list[Task] = []
        self._pending_stale = True
        self._window_complete = False
        self._announced: dict[str, tuple[bool, bool, int]] | None = None
        self._announced_busy = False
        self._announced_at = 0.0
        self._started = time.time()
        self._cursor = 0
        self._prefetch = 0  # twice the outcomes of the last step
        self._loop_thread: threading.Thread | None = None
        self._last_poll = 0.0
        self._pushed = False
        self._outage_since: float | None = None
        self.membership = Membership(service, self._lease_status, self._wake_now)
        self.ready = threading.Event()
        service.add_listener(self._on_commit)
        # Batch nodes (slurm:PARTITION) are driven apart: a thread per node (batch_driver).
        self.batch = BatchDriver(service)

    # ---- signals from other threads ------------------------------------------------------

    def _on_commit(self, _seq: int) -> None:
        if threading.current_thread() is not self._loop_thread:
            self._changed()
            self._wake_now()

    def _on_notify(self, _seq: int | None, topic: str | None) -> None:
        """Another process committed news for dispatchers (PostgreSQL's NOTIFY, on the
        listening thread); None: some may have been missed."""
        self._changed(topic in (None, TASKS), topic in (None, NODES))
        self._wake_now()

    def _changed(self, tasks: bool = True, nodes: bool = True) -> None:
        """The store changed under us: waiting tasks and cancels (`tasks`), and nodes and
        dispatchers (`nodes`), are read again."""
        if tasks:
            self._pending_stale = True
            self._check_cancels = True
        if nodes:
            self.membership.nodes_changed()  # a node may have been added, changed or removed

    def _lease_status(self) -> str:
        """What this dispatcher's row shows: running, or draining (stopping)."""
        return DRAINING if self._stopping.is_set() else RUNNING

    def _on_done(self, outcome: Outcome) -> None:
        """A node's receiver thread: free the task's slot, refill it, hand the outcome to the
        loop. The outcome is queued whatever refilling the slot does."""
        try:
            with self.lock:
                address = self.slots.outcome_arrived(outcome.task_id)
                if address is not None and not self._stopping.is_set():
                    self._start_reserved(address)
        finally:
            self._outcomes.put(outcome)
            self._wake.set()

    def _on_output(self, task_id: str, offset: int, data: bytes) -> None:
        """A node's receiver thread: output of a running task, queued for the next step; waits
        while too much is queued already (so the node waits too)."""
        flight = self.slots.flight(task_id)
        if flight is None:
            return  # no longer in flight here: its node was lost meanwhile
        chunk = OutputChunk(task_id, flight.attempt, offset, data)
        with self._output_room:
            while self._output_bytes > MAX_QUEUED_OUTPUT and not self._stopping.is_set():
                self._output_room.wait(0.1)
            self._output.append(chunk)
            self._output_bytes += len(data)
        self._wake.set()

    def _take_output(self) -> list[OutputChunk]:
        with self._output_room:
            chunks, self._output = self._output, []
            self._output_bytes = 0
            self._output_room.notify_all()
        return chunks

    def _put_back_output(self, chunks: list[OutputChunk]) -> None:
        """Output a step could not store (the store was away) goes first in the next."""
        with self._output_room:
            self._output[:0] = chunks
            self._output_bytes += sum(len(c.data) for c in chunks)

    def _stopping_now(self) -> None:
        """A stop began: receivers waiting for room to queue output wait no more."""
        with self._output_room:
            self._output_room.notify_all()

    def _on_lost(self, address: str, task_ids: list[str], reason: str) -> None:
        self._lost.put((address, task_ids, reason))
        self._wake_now()

    def _wake_now(self) -> None:
        self._urgent.set()
        self._wake.set()

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Dispatch until stopped (see `stop`). Raises ConfigError when the store refuses this
        dispatcher (a SQLite store in use on another machine)."""
        self._loop_thread = threading.current_thread()
        try:
            self.service.blobs.remove_stale()
        except OSError as exc:
            log.warning("blob store %s: %s", self.service.blobs.root, exc)
        self.membership.start()
        self._pushed = self.service.watch(self._on_notify)
        self.batch.start()
        try:
            self._beat()
            self._announce_start()
            self.ready.set()
            self._serve()
        finally:
            self.batch.stop()
            self._shutdown()

    def _serve(self) -> None:
        poll = self.settings.dispatch.poll_interval
        last_step = took = 0.0
        while not self._finished():
            self._wake.wait(poll)
            self._gather(last_step, took)
            self._wake.clear()
            self._urgent.clear()
            last_step = time.monotonic()
            try:
                self._step()
                self._store_back()
            except StoreUnavailableError as exc:
                self._store_away(exc)
            except DirtError as exc:
                log.error("dispatch step failed: %s", exc)
            except Exception:
                # One bad task, node or result must never stop the dispatcher.
                log.exception("dispatch step failed; carrying on")
                time.sleep(poll)
            took = time.monotonic() - last_step

    def _gather(self, last_step: float, took: float) -> None:
        """Wait before the next step while outcomes gather (see BATCH); at once when idle or
        when urgent news came.

        Freed slots are refilled meanwhile by the receiver threads from the held tasks (twice
        a step's worth, see `_prefetch`), so this delays only the writing, never the running.
        """
        # A step that took long (a node connecting, a slow disk) must not idle the next one.
        earliest = last_step + min(MAX_STEP_GAP, max(STEP_GAP, took / STEP_SHARE))
        latest = last_step + MAX_STEP_GAP
        while not self._urgent.is_set():
            now = time.monotonic()
            if now >= latest or (now >= earliest and self._outcomes.qsize() >= BATCH):
                return
            self._urgent.wait(min(STEP_GAP, (earliest if now < earliest else latest) - now))

    def _step(self) -> None:
        now = time.time()
        if self.membership.lease.taken_over.is_set():
            self._rejoin()
        finished = self._carried + self._collect_outcomes()
        self._carried = []
        # After the outcomes: a task's output arrives before its outcome, so every byte of a
        # task stored as finished in this step is stored with it.
        output = self._take_output()
        starts: list[InFlight] = []
        try:
            # Hold enough to refill every slot that frees before the next step, twice over.
            self._prefetch = 2 * len(finished)
            self._handle_lost()
            if self.nodes.handle_opened(now, self._stopping.is_set()):
                self._pending_stale = True
            self._poll(now)
            if self.membership.due():
                self._beat()
            if self._stopping.is_set() and not self.membership.draining:
                self.membership.drain()
            if self.nodes.handle_loads():
                self._pending_stale = True
            self.nodes.read_loads(now)
            self.nodes.connect_due(now)
            self._release_unusable()
            self._fail_unrunnable()
            self._start_reserved()
            pairs = self._select()
            starts = self._fold_starts(self._take_starts(), finished)
            started, reserved = self.service.dispatch(
                finished,
                [f.start for f in starts],
                [t.id for t in pairs],
                output,
                announce=self._announcement(now),
            )
        except StoreUnavailableError:
            # Kept for the next step: a write that failed committed whole or not at all, and
            # every one of them is conditional, so writing it again is safe either way.
            self._carried = finished
            self._put_back_output(output)
            self.slots.unwritten(starts)
            self._pending_stale = True
            raise
        self._confirm_starts(starts, started)
        ours = set(reserved)
        self.slots.hold(t for t in pairs if t.id in ours)
        if len(ours) < len(pairs):
            self._pending_stale = True  # another master reserved some first
        if self._start_reserved():
            self._wake.set()  # their start is written at the next step, not after a poll
        # After the reservations: a submission's news (which may also be a cancel) starts its
        # task one store round trip sooner.
        if self._check_cancels:
            self._send_cancels()

    def _poll(self, now: float) -> None:
        """Read the change sequence, every poll_interval (rarely when notifications come)."""
        every = self.settings.dispatch.poll_interval
        if self._pushed and self.service.pushing():
            every = SAFETY_POLL_S
        if now - self._last_poll >= every:
            self._last_poll = now
            news = self.service.changed_elsewhere()
            if news:
                # As PostgreSQL's notifications would have said (see `_on_notify`): a busy
                # agent's progress wakes no one, and brings no survey of the nodes.
                self._changed(TASKS in news, NODES in news)

    def _beat(self) -> None:
        """Take over dead dispatchers, claim or hand over nodes, drive this share of them."""
        running = self.slots.running
        share = self.membership.beat({a: running(a) for a in self.nodes.addresses()})
        before = set(self.nodes.addresses())
        self.nodes.refresh(share.driven, share.handing, running)
        if set(self.nodes.addresses()) != before:
            self._pending_stale = True

    def _collect_outcomes(self, keep_killed: bool = False) -> list[Finished]:
        """Verdicts on the outcomes that arrived; with `keep_killed`, tasks killed by a close
        stay in flight (to be returned to waiting) instead of counting as cancelled."""
        finished: list[Finished] = []
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return finished
            if keep_killed and outcome.killed:
                continue
            flight = self.slots.finish(outcome.task_id)
            if flight is None:
                continue  # already requeued when its node was lost
            verdict = judge(outcome, flight.task.name, flight.timeout)
            self.nodes.note_outcome(flight.node, outcome, verdict.state)
            finished.append(
                Finished(
                    task_id=outcome.task_id,
                    attempt=flight.attempt,
                    node=flight.node,
                    state=verdict.state,
                    results=verdict.results,
                    reason=verdict.reason,
                    module_sha256=flight.sha256,
                    output=outcome.output or None,
                    completed=outcome.received,
                    attachments=verdict.attachments,
                )
            )

    def _handle_lost(self) -> None:
        """Nodes whose connection went: their tasks leave flight here and now, and are
        requeued in the store (kept until that write succeeds)."""
        while True:
            try:
                address, task_ids, reason = self._lost.get_nowait()
            except queue.Empty:
                break
            lost, unwritten = self.slots.lose_node(address, task_ids)
            self._note_starts(unwritten)
            log.warning(
                "Node %s lost: %s; %d task(s) go back to waiting", address, reason, len(lost)
            )
            self.nodes.lost(address, reason, infra_failure=bool(lost), now=time.time())
            self._lost_unwritten.append((address, reason, lost, unwritten))
            self._pending_stale = True
        while self._lost_unwritten:
            address, reason, lost, unwritten = self._lost_unwritten[0]
            if unwritten:
                # Sent, so perhaps run: their start is written, and they count as lost
                # attempts like the rest (unless cancelled meanwhile: the store refuses those).
                started, _ = self.service.dispatch([], [f.start for f in unwritten], [])
                refused = {f.task.id for f in unwritten} - set(started)
                lost = [f for f in lost if f.task.id not in refused]
            items = [(f.task.id, f.attempt) for f in lost]
            if items:
                self.service.requeue(items, f"node {address} lost: {reason}", node_lost=True)
            self._lost_unwritten.pop(0)

    # ---- choosing and starting -----------------------------------------------------------

    def _views(self, connecting_counts: bool = False) -> list[NodeView]:
        return self.nodes.views(self.slots.running, connecting_counts)

    def _select(self) -> list[Task]:
        """Waiting tasks to reserve now: enough for every free slot plus the prefetch, of those
        the nodes this dispatcher drives can run."""
        if self._stopping.is_set() or not self.membership.lease.valid():
            return []
        with self.lock:
            views = self._views()
            busy = self.slots.busy()
        if not views:
            return []  # no node to drive (agents fetch their own work): nothing to read
        capacity = sum(v.capacity for v in views if v.usable)
        alone = self.membership.share.peers <= 1
        prefetch = max(PREFETCH if alone else min(PREFETCH, capacity), self._prefetch)
        wanted = capacity + prefetch - busy
        if self._pending_stale or (len(self._pending) < wanted and not self._window_complete):
            window = max(WINDOW, wanted)
            self._pending = self.service.waiting_tasks(window, self.order)
            self._window_complete = len(self._pending) < window
            self._pending_stale = False
        if wanted <= 0 or not self._pending:
            return []
        # A task whose module is gone is failed when it is launched (see _launch).
        chosen = to_reserve(self._pending, views, wanted)
        taken = {t.id for t in chosen}
        self._pending = [t for t in self._pending if t.id not in taken]
        return chosen

    # ---- announcing ------------------------------------------------------------------------

    def _me(self) -> DispatcherInfo:
        return DispatcherInfo(
            self.service.master_id,
            socket.gethostname(),
            os.getpid(),
            self._started,
            time.time(),
            order=self.order,
        )

    def _announce_start(self) -> None:
        """Add this dispatcher's row of announcements (readers say why tasks wait from it)."""
        first = self._announcement(time.time(), force=True)
        assert first is not None  # forced
        self.service.dispatcher_started(first)

    def _announcement(self, now: float, force: bool = False) -> DispatcherInfo | None:
        """What this dispatcher tells readers (see DispatcherInfo), or None when nothing is due.

        Written in the step's own transaction: at once when a node connects, is lost, stops or
        starts accepting tasks or changes capacity; every ANNOUNCE_S at most while slots and
        heads move (they move with every task: readers need them current, not per task); and
        every HEARTBEAT_S regardless.
        """
        with self.lock:
            views = self._views(connecting_counts=True)
            busy = self.slots.has_held() or any(v.running for v in views)
        states = {v.address: (v.online, v.accepting, v.capacity) for v in views}
        since = now - self._announced_at
        if not (
            force
            or since >= HEARTBEAT_S
            or states != self._announced
            or (since >= ANNOUNCE_S and (busy or self._announced_busy))
        ):
            return None
        with self.lock:
            at_hand = [*self.slots.held(), *self._pending]
        self._announced, self._announced_busy, self._announced_at = states, busy, now
        info = self._me()
        info.last_seen = now
        info.nodes = {
            v.address: NodeRuntime(v.online, v.accepting, v.capacity, v.running) for v in views
        }
        info.heads = heads(at_hand, views)
        return info
