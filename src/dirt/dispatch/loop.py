"""The serve loop: wake on change, reserve waiting tasks, store what the nodes did.

One thread owns the loop and every store write it makes. When a task finishes, the node's
execnet receiver thread frees its slot and at once starts the next reserved task that node can
run (under the slots lock), then queues the outcome and wakes the loop; the loop writes starts,
outcomes and new reservations in one transaction, at most every STEP_GAP. Node connections are
opened on helper threads so a slow or dead host never holds up the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from dirt.config import Settings
from dirt.dispatch import runner
from dirt.dispatch.connection import NodeConnection, Outcome
from dirt.dispatch.outcome import judge
from dirt.dispatch.select import NodeView, fill_order, pick, to_reserve, waiting_reason
from dirt.errors import DirtError, NotFoundError
from dirt.models import Node, Task, TaskState
from dirt.service import Finished, Service

log = logging.getLogger("dirt")

WINDOW = 128  # waiting tasks kept in memory; refilled as they are reserved
# Tasks reserved beyond the free slots, so a slot that frees is refilled at once. Reserved tasks
# stay waiting (and can be cancelled); any node of this dispatcher can take them.
PREFETCH = 64
STEP_GAP = 0.005  # seconds: the shortest time between two store transactions of the loop
NODE_REFRESH_S = 5.0
LOAD_REFRESH_S = 5.0  # balancer "load": how often each node's load is read (not per task)
LOAD_DISPLAY_S = 30.0  # balancer "slots": the load is read only for `dirt nodes list`
MAX_PENALTY = 4  # a node's slots are halved per recent infrastructure failure, down to 1/16


@dataclass
class InFlight:
    task: Task
    node: str
    attempt: int
    sha256: str
    timeout: float | None
    started: float = 0.0
    slot_freed: bool = False


@dataclass
class NodeState:
    """The loop's view of one node: its connection and when to try it again."""

    node: Node
    connection: NodeConnection | None = None
    connecting: bool = False
    retry_at: float = 0.0
    backoff: float = 0.0
    # Recent infrastructure failures (lost connection, killed process): each halves the slots
    # the scheduler uses, each task that succeeds there gives one back (BOINC's host quota).
    penalty: int = 0
    load: list[float] | None = None
    load_at: float = 0.0
    load_reading: bool = False
    kills_sent: set[str] = field(default_factory=set)

    def accepting(self, balancer: str, margin: float) -> bool:
        """Balancer "load": False while the 1-minute load is above cpu_count minus margin."""
        load = self.load or self.node.load  # before the first reading: the probe's
        if balancer != "load" or not load:
            return True
        cpus = int(self.node.sys_info.get("cpu_count") or self.node.slots or 1)
        return load[0] <= cpus - margin


class Dispatcher:
    """Runs waiting tasks on nodes until stopped."""

    def __init__(self, service: Service, settings: Settings | None = None) -> None:
        self.service = service
        self.settings = settings or service.settings
        self.isolation = self.settings.dispatch.isolation
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._lost: queue.SimpleQueue[tuple[str, list[str], str]] = queue.SimpleQueue()
        self._opened: queue.SimpleQueue[tuple[str, NodeConnection | None, str | None]] = (
            queue.SimpleQueue()
        )
        self._loads: queue.SimpleQueue[tuple[str, list[float] | None]] = queue.SimpleQueue()
        self._check_cancels = True
        self._inflight: dict[str, InFlight] = {}
        self._running: Counter[str] = Counter()
        # Tasks reserved in the store by this dispatcher, started the moment a slot frees on a
        # node that can run them, so a node never waits for a store write between tasks.
        self._held: deque[Task] = deque()
        # Tasks sent to nodes whose move to running is written in the next store transaction.
        self._to_start: list[InFlight] = []
        # Tasks whose module vanished between reservation and start, failed by the loop.
        self._unrunnable: list[tuple[Task, str]] = []
        # Guards the slot bookkeeping above: execnet's receiver threads refill a freed slot
        # from the reserved tasks at once, without waiting for the loop or the store.
        self._slots = threading.RLock()
        self._nodes: dict[str, NodeState] = {}
        self._pending: list[Task] = []
        self._pending_stale = True
        self._window_complete = False
        self._reasons: dict[str, str | None] = {}
        self._cursor = 0
        self._loop_thread: threading.Thread | None = None
        self._last_poll = 0.0
        self._last_node_refresh = 0.0
        self.ready = threading.Event()
        service.add_listener(self._on_commit)

    # ---- signals from other threads ------------------------------------------------------

    def _on_commit(self, _seq: int) -> None:
        if threading.current_thread() is not self._loop_thread:
            self._pending_stale = True
            self._check_cancels = True
            self._last_node_refresh = 0.0  # a node may have been added, changed or removed
            self._wake.set()

    def _on_done(self, outcome: Outcome) -> None:
        with self._slots:
            flight = self._inflight.get(outcome.task_id)
            if flight is not None and not flight.slot_freed:
                flight.slot_freed = True
                self._running[flight.node] -= 1
                if not self._stopping.is_set():
                    self._start_reserved(flight.node)
        self._outcomes.put(outcome)
        self._wake.set()

    def _on_lost(self, address: str, task_ids: list[str], reason: str) -> None:
        self._lost.put((address, task_ids, reason))
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Take no new tasks; `run` returns running ones to waiting and returns."""
        self._stopping.set()
        self._wake.set()

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        self._loop_thread = threading.current_thread()
        recovered = self.service.recover_orphans()
        if recovered:
            log.info(
                "%d task(s) left running by an earlier dispatcher are waiting again", len(recovered)
            )
        self._refresh_nodes(time.time())
        self.ready.set()
        poll = self.settings.dispatch.poll_interval
        last_step = 0.0
        try:
            while not self._stopping.is_set():
                self._wake.wait(poll)
                # Group commit: while busy, take a step at most every STEP_GAP so one store
                # transaction carries many outcomes. Freed slots are refilled meanwhile by the
                # receiver threads, so this delays only the writing, never the running.
                gap = time.monotonic() - last_step
                if gap < STEP_GAP and not self._stopping.is_set():
                    time.sleep(STEP_GAP - gap)
                self._wake.clear()
                last_step = time.monotonic()
                try:
                    self._step()
                except DirtError as exc:
                    log.error("dispatch step failed: %s", exc)
                except Exception:
                    # One bad task, node or result must never stop the dispatcher.
                    log.exception("dispatch step failed; carrying on")
                    time.sleep(poll)
        finally:
            self._shutdown()

    def _step(self) -> None:
        now = time.time()
        finished = self._collect_outcomes()
        self._handle_lost()
        self._handle_opened(now)
        if now - self._last_poll >= self.settings.dispatch.poll_interval:
            self._last_poll = now
            if self.service.changed_elsewhere():
                self._pending_stale = True
                self._check_cancels = True
                self._last_node_refresh = 0.0
        if now - self._last_node_refresh >= NODE_REFRESH_S:
            self._refresh_nodes(now)
        if self._check_cancels:
            self._check_cancels = False
            self._send_cancels()
        self._handle_loads()
        self._read_loads(now)
        self._connect_due(now)
        self._release_unusable()
        self._fail_unrunnable()
        with self._slots:
            self._start_reserved()
        pairs = self._select()
        with self._slots:
            starts, self._to_start = self._to_start, []
        starts = self._fold_starts(starts, finished)
        started, reserved = self.service.dispatch(
            finished,
            [(f.task.id, f.node, f.started, f.attempt) for f in starts],
            [t.id for t in pairs],
        )
        ours = set(reserved)
        with self._slots:
            self._confirm_starts(starts, started)
            self._held.extend(t for t in pairs if t.id in ours)
            if len({t.priority for t in self._held}) > 1:
                # Highest priority first, then oldest: the order the store hands them out.
                ordered = sorted(self._held, key=lambda t: (-t.priority, t.created, t.id))
                self._held = deque(ordered)
            if self._start_reserved():
                self._wake.set()  # write their start now, not when the next outcome comes

    def _collect_outcomes(self, keep_killed: bool = False) -> list[Finished]:
        """Verdicts on the outcomes that arrived; with `keep_killed`, tasks killed by a close
        stay in flight (to be returned to waiting) instead of counting as cancelled."""
        finished = []
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return finished
            if keep_killed and outcome.killed:
                continue
            with self._slots:
                flight = self._inflight.pop(outcome.task_id, None)
                if flight is None:
                    continue  # already requeued when its node was lost
                if not flight.slot_freed:
                    flight.slot_freed = True
                    self._running[flight.node] -= 1
            verdict = judge(outcome, flight.task.name, flight.timeout)
            self._note_node_outcome(flight.node, outcome, verdict.state)
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
        while True:
            try:
                address, task_ids, reason = self._lost.get_nowait()
            except queue.Empty:
                return
            state = self._nodes.get(address)
            items = []
            with self._slots:
                # Tasks sent there whose start is not written yet are still waiting (reserved)
                # in the store: they simply go back to the held tasks for another node.
                unwritten = [f for f in self._to_start if f.node == address]
                self._to_start = [f for f in self._to_start if f.node != address]
                for flight in unwritten:
                    self._inflight.pop(flight.task.id, None)
                    if not flight.slot_freed:
                        flight.slot_freed = True
                        self._running[address] -= 1
                    self._held.appendleft(flight.task)
                # The loop may have counted a task on this node that the connection never sent.
                ids = set(task_ids) | {t for t, f in self._inflight.items() if f.node == address}
                for task_id in sorted(ids):
                    flight = self._inflight.pop(task_id, None)
                    if flight is not None:
                        if not flight.slot_freed:
                            flight.slot_freed = True
                            self._running[flight.node] -= 1
                        items.append((task_id, flight.attempt))
            log.warning(
                "Node %s lost: %s; %d task(s) go back to waiting", address, reason, len(items)
            )
            if items:
                self.service.requeue(items, f"node {address} lost: {reason}", node_lost=True)
            if state is not None:
                if items:
                    state.penalty = min(MAX_PENALTY, state.penalty + 1)
                state.kills_sent.clear()
                if state.connection is not None:
                    state.connection.close()
                state.connection = None
                self._schedule_retry(state, time.time())
            self.service.node_health(address, online=False, error=reason, infra_failure=bool(items))
            self._pending_stale = True

    def _schedule_retry(self, state: NodeState, now: float) -> None:
        cfg = self.settings.dispatch
        state.backoff = min(
            cfg.backoff_max, state.backoff * 2 if state.backoff else cfg.backoff_initial
        )
        state.retry_at = now + state.backoff

    def _handle_opened(self, now: float) -> None:
        while True:
            try:
                address, connection, error = self._opened.get_nowait()
            except queue.Empty:
                return
            state = self._nodes.get(address)
            if state is None or self._stopping.is_set():
                if connection is not None:
                    connection.close()
                continue
            state.connecting = False
            if connection is None:
                self._schedule_retry(state, now)
                log.warning(
                    "Node %s unreachable: %s; next try in %.1f s", address, error, state.backoff
                )
                self.service.node_health(address, online=False, error=error)
            else:
                log.info("Node %s connected", address)
                state.connection = connection
                state.backoff = 0.0
                self.service.node_health(address, online=True)
            self._pending_stale = True

    def _refresh_nodes(self, now: float) -> None:
        self._last_node_refresh = now
        known = {n.address: n for n in self.service.nodes()}
        for address in list(self._nodes):
            if address not in known:
                state = self._nodes.pop(address)
                if state.connection is not None and not state.connection.in_flight:
                    state.connection.close()
        for address, node in known.items():
            state = self._nodes.setdefault(address, NodeState(node))
            state.node = node
            if not node.enabled and state.connection is not None and not self._running[address]:
                state.connection.close()
                state.connection = None

    def _connect_due(self, now: float) -> None:
        for address, state in self._nodes.items():
            if (
                state.node.enabled
                and state.connection is None
                and not state.connecting
                and now >= state.retry_at
            ):
                state.connecting = True
                threading.Thread(
                    target=self._open,
                    args=(address, dict(state.node.ssh)),
                    name=f"dirt-connect-{address}",
                    daemon=True,
                ).start()

    def _open(self, address: str, ssh: dict | None = None) -> None:
        try:
            connection = runner.connect(
                address,
                self.settings.nodes,
                self.isolation,
                self._on_done,
                lambda ids, reason: self._on_lost(address, ids, reason),
                timeout=self.settings.nodes.connect_timeout + 20,
                ssh=ssh,
            )
        except Exception as exc:
            self._opened.put((address, None, str(exc)))
        else:
            self._opened.put((address, connection, None))
        self._wake.set()

    def _views(self, connecting_counts: bool = False) -> list[NodeView]:
        """Nodes as the scheduler sees them; for waiting reasons a node still connecting
        counts as online, so a task does not flash "offline" while its node starts."""
        views = []
        cfg = self.settings.dispatch
        for address, state in list(self._nodes.items()):
            views.append(
                NodeView(
                    address=address,
                    sys_info=state.node.sys_info,
                    slots=state.node.slots,
                    running=self._running[address],
                    online=(state.connection is not None and state.connection.alive)
                    or (connecting_counts and state.connecting),
                    enabled=state.node.enabled,
                    accepting=state.accepting(cfg.balancer, cfg.load_margin),
                    penalty=state.penalty,
                )
            )
        return views

    def _select(self) -> list[Task]:
        """Waiting tasks to reserve now: enough for every free slot plus PREFETCH."""
        if self._stopping.is_set():
            return []
        views = self._views()
        capacity = sum(v.capacity for v in views if v.usable)
        wanted = capacity + PREFETCH - len(self._held) - sum(self._running.values())
        if self._pending_stale or (len(self._pending) < wanted and not self._window_complete):
            self._pending = self.service.waiting_tasks(WINDOW)
            self._window_complete = len(self._pending) < WINDOW
            self._pending_stale = False
            self._update_reasons(self._views(connecting_counts=True))
        if wanted <= 0 or not self._pending:
            return []
        # A task whose module is gone is failed when it is launched (see _launch).
        chosen = to_reserve(self._pending, views, wanted)
        taken = {t.id for t in chosen}
        self._pending = [t for t in self._pending if t.id not in taken]
        return chosen

    def _update_reasons(self, views: list[NodeView]) -> None:
        """Store why tasks wait, when that changed (so `dirt status` and the page can say)."""
        changed = {}
        for task in self._pending:
            reason = waiting_reason(task, views)
            if self._reasons.get(task.id, task.waiting_reason) != reason:
                changed[task.id] = reason
            self._reasons[task.id] = reason
        if changed:
            self.service.set_waiting_reasons(changed)

    # ---- health, load and cancels -------------------------------------------------------

    def _note_node_outcome(self, address: str, outcome: Outcome, state: TaskState) -> None:
        """Infrastructure failures (the task's process killed from outside, its fork server
        gone) cost the node a quota step; a success gives one back."""
        node = self._nodes.get(address)
        if node is None:
            return
        if state is TaskState.SUCCEEDED:
            node.penalty = max(0, node.penalty - 1)
        elif outcome.signal is not None and not (outcome.killed or outcome.timed_out):
            node.penalty = min(MAX_PENALTY, node.penalty + 1)
            self.service.node_health(address, online=True, infra_failure=True)

    def _send_cancels(self) -> None:
        """Kill, on their nodes, the running tasks of ours that someone asked to cancel."""
        for task_id, attempt in self.service.cancel_requested():
            flight = self._inflight.get(task_id)
            if flight is None or flight.attempt != attempt:
                continue
            state = self._nodes.get(flight.node)
            if state is None or state.connection is None or task_id in state.kills_sent:
                continue
            state.kills_sent.add(task_id)
            log.info("Task %s: cancel requested; killing it on %s", task_id, flight.node)
            try:
                state.connection.kill(task_id)
            except Exception as exc:
                self._on_lost(flight.node, [task_id], f"could not send the kill: {exc}")

    def _read_loads(self, now: float) -> None:
        """Ask each connected node for its load over its open connection, every few seconds."""
        every = LOAD_REFRESH_S if self.settings.dispatch.balancer == "load" else LOAD_DISPLAY_S
        for address, state in self._nodes.items():
            connection = state.connection
            if connection is None or state.load_reading or now - state.load_at < every:
                continue
            state.load_reading = True
            state.load_at = now
            threading.Thread(
                target=self._read_load,
                args=(address, connection),
                daemon=True,
                name=f"dirt-load-{address}",
            ).start()

    def _read_load(self, address: str, connection: NodeConnection) -> None:
        try:
            load, _running = connection.load(timeout=LOAD_REFRESH_S)
        except Exception:
            load = None  # a dead connection is reported by on_lost; a slow one just waits
        self._loads.put((address, load))
        self._wake.set()

    def _handle_loads(self) -> None:
        while True:
            try:
                address, load = self._loads.get_nowait()
            except queue.Empty:
                return
            state = self._nodes.get(address)
            if state is None:
                continue
            state.load_reading = False
            if load is None:
                continue
            cfg = self.settings.dispatch
            was = state.accepting(cfg.balancer, cfg.load_margin)
            state.load = load
            if state.accepting(cfg.balancer, cfg.load_margin) != was:
                self._pending_stale = True  # waiting reasons may change ("too loaded")
            if state.connection is not None and state.connection.alive:
                self.service.node_health(address, online=True, load=load)

    def _release_unusable(self) -> None:
        """Reserved tasks that no usable node can run now go back to every master."""
        views = [v for v in self._views() if v.usable]
        with self._slots:
            stuck = [t for t in self._held if not any(pick([t], v) is not None for v in views)]
            for task in stuck:
                self._held.remove(task)
        if stuck:
            self.service.release([t.id for t in stuck])
            self._pending_stale = True

    def _fail_unrunnable(self) -> None:
        with self._slots:
            found, self._unrunnable = self._unrunnable, []
        for task, reason in found:
            self.service.release([task.id])
            self.service.fail_unrunnable(task.id, reason)
            log.error("Task %s failed: %s", task.id, reason)

    def _start_reserved(self, only: str | None = None) -> int:
        """Send reserved tasks to free slots of nodes that can run them, round robin.

        Called with the slots lock held, from the loop or from a node's receiver thread (then
        `only` names the node whose slot just freed). Returns how many tasks went.
        """
        if not self._held:
            return 0
        views = [v for v in self._views() if only is None or v.address == only]
        sent = 0
        for view in fill_order(views, self._cursor):
            index = pick(self._held, view)
            if index is None:
                continue
            task = self._held[index]
            del self._held[index]
            self._launch(task, view.address)
            sent += 1
            if not self._held:
                break
        if sent and only is None:
            self._cursor += 1
        return sent

    def _launch(self, task: Task, address: str) -> None:
        state = self._nodes[address]
        try:
            module = self.service.modules.load(task.name)
        except NotFoundError as exc:
            self._unrunnable.append((task, str(exc)))
            self._wake.set()
            return
        timeout = task.timeout or self.settings.dispatch.timeout or None
        flight = InFlight(task, address, task.attempts + 1, module.sha256, timeout, time.time())
        self._inflight[task.id] = flight
        self._to_start.append(flight)
        self._running[address] += 1
        self._reasons.pop(task.id, None)
        log.info("%s -> %s", task.id, address)
        assert state.connection is not None
        try:
            state.connection.run(
                task.id, task.name, module.source, module.sha256, task.kwargs or {}, timeout
            )
        except Exception as exc:
            # The connection broke between selection and sending; the lost handler requeues.
            self._on_lost(address, [task.id], f"could not send task: {exc}")

    def _fold_starts(self, starts: list[InFlight], finished: list[Finished]) -> list[InFlight]:
        """Runs that finished before their start was written are stored in one write; returns
        the starts still to write."""
        done = {f.task_id: f for f in finished}
        remaining = []
        for flight in starts:
            result = done.get(flight.task.id)
            if result is not None and result.attempt == flight.attempt:
                result.started = flight.started
            else:
                remaining.append(flight)
        return remaining

    def _confirm_starts(self, starts: list[InFlight], started: list[str]) -> None:
        """A sent task whose start the store refused (cancelled meanwhile) is killed."""
        ok = set(started)
        for flight in starts:
            if flight.task.id in ok:
                continue
            if self._inflight.pop(flight.task.id, None) is None:
                continue  # its node was lost in the meantime
            if not flight.slot_freed:
                flight.slot_freed = True
                self._running[flight.node] -= 1
            state = self._nodes.get(flight.node)
            log.info(
                "Task %s was cancelled before it started; killing it on %s",
                flight.task.id,
                flight.node,
            )
            if state is not None and state.connection is not None:
                try:
                    state.connection.kill(flight.task.id)
                except Exception:
                    log.debug("kill of %s not sent: its node is going away", flight.task.id)

    def _shutdown(self) -> None:
        """Store what finished, return what still runs to waiting, close every gateway."""
        try:
            finished = self._collect_outcomes()
            for state in self._nodes.values():
                if state.connection is not None:
                    state.connection.close()
            # Closing kills what still runs; those tasks go back to waiting, while outcomes that
            # arrived complete in the meantime are still worth storing.
            finished += self._collect_outcomes(keep_killed=True)
            # Starts not yet written are written too, so the requeue below finds them running.
            with self._slots:
                starts, self._to_start = self._to_start, []
            starts = self._fold_starts(starts, finished)
            self.service.dispatch(
                finished, [(f.task.id, f.node, f.started, f.attempt) for f in starts], []
            )
            self.service.release()
            items = [(task_id, f.attempt) for task_id, f in self._inflight.items()]
            if items:
                self.service.requeue(items, "dispatcher stopped while it ran")
                log.info("%d running task(s) returned to waiting", len(items))
            self._inflight.clear()
        finally:
            for state in self._nodes.values():
                if state.connection is not None:
                    state.connection.close()
                    state.connection = None
