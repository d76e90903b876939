"""The serve loop: wake on change, store outcomes, pair waiting tasks with free node slots.

One thread owns the loop and every write it makes; execnet's receiver threads only put outcomes
on a queue and wake it. Node connections are opened on helper threads so a slow or dead host
never holds up the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass

from dirt.config import Settings
from dirt.dispatch import runner
from dirt.dispatch.connection import NodeConnection, Outcome
from dirt.dispatch.outcome import judge
from dirt.dispatch.select import NodeView, assign, waiting_reason
from dirt.errors import DirtError, NotFoundError
from dirt.models import Node, Task
from dirt.service import Finished, Service

log = logging.getLogger("dirt")

WINDOW = 256  # waiting tasks kept in memory; refilled as they are claimed
NODE_REFRESH_S = 5.0
LOAD_REFRESH_S = 5.0


@dataclass
class InFlight:
    task: Task
    node: str
    attempt: int
    sha256: str
    timeout: float | None


@dataclass
class NodeState:
    """The loop's view of one node: its connection and when to try it again."""

    node: Node
    connection: NodeConnection | None = None
    connecting: bool = False
    retry_at: float = 0.0
    backoff: float = 0.0


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
        self._inflight: dict[str, InFlight] = {}
        self._running: Counter[str] = Counter()
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
            self._wake.set()

    def _on_done(self, outcome: Outcome) -> None:
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
        try:
            while not self._stopping.is_set():
                self._wake.wait(poll)
                self._wake.clear()
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
                self._last_node_refresh = 0.0
        if now - self._last_node_refresh >= NODE_REFRESH_S:
            self._refresh_nodes(now)
        self._connect_due(now)
        pairs = self._select()
        claimed = self.service.claim([(t.id, node) for t, node in pairs], finished)
        self._start(pairs, set(claimed))

    def _collect_outcomes(self) -> list[Finished]:
        finished = []
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return finished
            flight = self._inflight.pop(outcome.task_id, None)
            if flight is None:
                continue  # already requeued when its node was lost
            self._running[flight.node] -= 1
            verdict = judge(outcome, flight.task.name, flight.timeout)
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
            # The loop may have counted a task on this node that the connection never sent.
            ids = set(task_ids) | {t for t, f in self._inflight.items() if f.node == address}
            items = []
            for task_id in sorted(ids):
                flight = self._inflight.pop(task_id, None)
                if flight is not None:
                    self._running[flight.node] -= 1
                    items.append((task_id, flight.attempt))
            log.warning(
                "Node %s lost: %s; %d task(s) go back to waiting", address, reason, len(items)
            )
            if items:
                self.service.requeue(items, f"node {address} lost: {reason}", node_lost=True)
            if state is not None:
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
                log.warning(
                    "Node %s unreachable: %s; next try in %.0f s",
                    address,
                    error,
                    max(state.backoff * 2, self.settings.dispatch.backoff_initial),
                )
                self._schedule_retry(state, now)
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
                    args=(address,),
                    name=f"dirt-connect-{address}",
                    daemon=True,
                ).start()

    def _open(self, address: str) -> None:
        try:
            connection = runner.connect(
                address,
                self.settings.nodes,
                self.isolation,
                self._on_done,
                lambda ids, reason: self._on_lost(address, ids, reason),
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
        for address, state in self._nodes.items():
            views.append(
                NodeView(
                    address=address,
                    sys_info=state.node.sys_info,
                    slots=state.node.slots,
                    running=self._running[address],
                    online=(state.connection is not None and state.connection.alive)
                    or (connecting_counts and state.connecting),
                    enabled=state.node.enabled,
                    penalty=state.node.infra_failures,
                )
            )
        return views

    def _select(self) -> list[tuple[Task, str]]:
        if self._stopping.is_set():
            return []
        views = self._views()
        free = sum(v.free for v in views)
        if self._pending_stale or (len(self._pending) < free and not self._window_complete):
            self._pending = self.service.waiting_tasks(WINDOW)
            self._window_complete = len(self._pending) < WINDOW
            self._pending_stale = False
            self._update_reasons(self._views(connecting_counts=True))
        if free == 0 or not self._pending:
            return []
        assignment = assign(self._pending, views, self._cursor)
        self._cursor = assignment.cursor
        pairs = []
        for task, node in assignment.pairs:
            try:
                self.service.modules.load(task.name)
            except NotFoundError as exc:
                self.service.fail_unrunnable(task.id, str(exc))
                log.error("Task %s failed: %s", task.id, exc)
                continue
            pairs.append((task, node))
        taken = {t.id for t, _ in assignment.pairs}
        self._pending = [t for t in self._pending if t.id not in taken]
        return pairs

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

    def _start(self, pairs: list[tuple[Task, str]], claimed: set[str]) -> None:
        default_timeout = self.settings.dispatch.timeout or None
        for task, address in pairs:
            if task.id not in claimed:
                continue
            state = self._nodes[address]
            module = self.service.modules.load(task.name)
            timeout = task.timeout or default_timeout
            flight = InFlight(task, address, task.attempts + 1, module.sha256, timeout)
            self._inflight[task.id] = flight
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

    def _shutdown(self) -> None:
        """Store what finished, return what still runs to waiting, close every gateway."""
        try:
            finished = self._collect_outcomes()
            if finished:
                self.service.finish(finished)
            for state in self._nodes.values():
                if state.connection is not None:
                    state.connection.close()
            # Outcomes that arrived while the gateways closed are still worth storing.
            finished = self._collect_outcomes()
            if finished:
                self.service.finish(finished)
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
