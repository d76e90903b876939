"""The nodes a dispatcher drives: their connections, reconnection backoff, loads and health.

`Nodes` is the one place that says which nodes this dispatcher drives (`refresh`, with the
nodes whose lease it holds: see dispatch.membership) and holds each one's `NodeState`.
Connections are opened on helper threads, so a slow or dead host never holds up the others,
and loads are read over the open connections on helper threads too; both report back through
queues the loop drains (`handle_opened`, `handle_loads`). Membership and each state's
connection change only under `lock`, the one lock over the dispatcher's shared state, because
receiver threads read them to refill slots.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from dirt.config import Settings
from dirt.dispatch import runner
from dirt.dispatch.connection import NodeConnection, Outcome
from dirt.dispatch.incoming import Limits, OnOutput
from dirt.dispatch.select import NodeView
from dirt.errors import StoreUnavailableError
from dirt.models import Node, NodeKind, TaskState
from dirt.service import Service

log = logging.getLogger("dirt")

LOAD_REFRESH_S = 5.0  # balancer "load": how often each node's load is read (not per task)
LOAD_DISPLAY_S = 30.0  # balancer "slots": the load is read only for `dirt nodes list`
MAX_PENALTY = 4  # a node's slots are halved per recent infrastructure failure, down to 1/16
# Nodes this module never connects to: agents fetch their own work, batch nodes have a driver.
UNDRIVEN = frozenset({NodeKind.AGENT, NodeKind.SLURM})

OnDone = Callable[[Outcome], None]
OnLost = Callable[[str, list[str], str], None]  # address, task ids in flight there, reason
Running = Callable[[str], int]  # tasks running on a node, by address


@dataclass
class NodeState:
    """The dispatcher's view of one node: its connection and when to try it again."""

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
    # Being handed over to another dispatcher: no new task starts here; the lease goes once
    # nothing of ours runs here.
    handing: bool = False

    def accepting(self, balancer: str, margin: float) -> bool:
        """Balancer "load": False while the 1-minute load is above cpu_count minus margin."""
        load = self.load or self.node.load  # before the first reading: the probe's
        if balancer != "load" or not load:
            return True
        cpus = int(self.node.sys_info.get("cpu_count") or self.node.slots or 1)
        return load[0] <= cpus - margin

    @property
    def online(self) -> bool:
        return self.connection is not None and self.connection.alive


class Nodes:
    """The nodes this dispatcher drives, by address."""

    def __init__(
        self,
        lock: threading.RLock,
        service: Service,
        settings: Settings,
        on_done: OnDone,
        on_lost: OnLost,
        wake: Callable[[], None],
        on_output: OnOutput | None = None,
    ) -> None:
        self.lock = lock
        self.service = service
        self.settings = settings
        self._on_done = on_done
        self._on_lost = on_lost
        self._on_output = on_output
        self._wake = wake
        self._limits = Limits(
            output=settings.dispatch.output_limit, attachments=settings.dispatch.attachment_limit
        )
        self._states: dict[str, NodeState] = {}
        self._opened: queue.SimpleQueue[tuple[str, NodeConnection | None, str | None]] = (
            queue.SimpleQueue()
        )
        self._loads: queue.SimpleQueue[tuple[str, list[float] | None]] = queue.SimpleQueue()

    # ---- reads -----------------------------------------------------------------------------

    def __getitem__(self, address: str) -> NodeState:
        with self.lock:
            return self._states[address]

    def addresses(self) -> list[str]:
        with self.lock:
            return list(self._states)

    def connection(self, address: str) -> NodeConnection | None:
        with self.lock:
            state = self._states.get(address)
            return None if state is None else state.connection

    def view(self, address: str, running: Running, connecting_counts: bool = False) -> NodeView:
        """The node as the scheduler sees it; with `connecting_counts` (for waiting reasons) a
        node still connecting counts as online, so a task does not flash "offline" meanwhile."""
        cfg = self.settings.dispatch
        with self.lock:
            state = self._states[address]
            return NodeView(
                address=address,
                sys_info=state.node.sys_info,
                slots=state.node.slots,
                running=running(address),
                online=state.online or (connecting_counts and state.connecting),
                enabled=state.node.enabled,
                accepting=state.accepting(cfg.balancer, cfg.load_margin),
                penalty=state.penalty,
            )

    def views(self, running: Running, connecting_counts: bool = False) -> list[NodeView]:
        """The nodes tasks may start on: every driven node but those being handed over."""
        with self.lock:
            return [
                self.view(a, running, connecting_counts)
                for a, state in self._states.items()
                if not state.handing
            ]

    def launchable(self, address: str) -> bool:
        """True when a task may start on `address`: driven, connected, not being handed over."""
        with self.lock:
            state = self._states.get(address)
            return state is not None and state.connection is not None and not state.handing

    # ---- membership ------------------------------------------------------------------------

    def refresh(self, driven: Sequence[Node], handing: Set[str], running: Running) -> None:
        """Drive `driven` (the nodes whose lease this dispatcher holds): new ones join, others
        leave, those in `handing` take no new tasks, and a disabled node's connection closes
        once nothing runs there. An agent node is never driven: it fetches its own work over
        HTTP (dirt.web.agent_api); a batch node is driven by dirt.dispatch.batch_driver."""
        known = {n.address: n for n in driven if n.kind not in UNDRIVEN}
        closing = []
        with self.lock:
            for address in list(self._states):
                if address not in known:
                    state = self._states.pop(address)
                    # Tasks still running there finish and are stored; the connection stays.
                    if state.connection is not None and not state.connection.in_flight:
                        closing.append(state.connection)
            for address, node in known.items():
                state = self._states.setdefault(address, NodeState(node))
                state.node = node
                state.handing = address in handing
                if not node.enabled and state.connection is not None and not running(address):
                    closing.append(state.connection)
                    state.connection = None
        for connection in closing:
            connection.close()

    # ---- connecting ------------------------------------------------------------------------

    def connect_due(self, now: float) -> None:
        """Start opening a connection to each enabled, unconnected node whose retry is due."""
        with self.lock:
            due = [
                (address, dict(state.node.ssh))
                for address, state in self._states.items()
                if state.node.enabled
                and state.connection is None
                and not state.connecting
                and now >= state.retry_at
            ]
            for address, _ssh in due:
                self._states[address].connecting = True
        for address, ssh in due:
            threading.Thread(
                target=self._open, args=(address, ssh), name=f"dirt-connect-{address}", daemon=True
            ).start()

    def _open(self, address: str, ssh: dict[str, Any]) -> None:
        try:
            connection = runner.connect(
                address,
                self.settings.nodes,
                self.settings.dispatch.isolation,
                self._on_done,
                lambda ids, reason: self._on_lost(address, ids, reason),
                timeout=self.settings.nodes.connect_timeout + 20,
                ssh=ssh,
                on_output=self._on_output,
                blobs=self.service.blobs,
                limits=self._limits,
            )
        except Exception as exc:
            self._opened.put((address, None, str(exc)))
        else:
            self._opened.put((address, connection, None))
        self._wake()

    def handle_opened(self, now: float, stopping: bool) -> bool:
        """Take the connections opened (or not) since the last call; True if any came."""
        changed = False
        while True:
            try:
                address, connection, error = self._opened.get_nowait()
            except queue.Empty:
                return changed
            with self.lock:
                state = self._states.get(address)
                if state is not None and not stopping:
                    state.connecting = False
                    if connection is None:
                        self._schedule_retry(state, now)
                    else:
                        state.connection = connection
                        state.backoff = 0.0
            if state is None or stopping:
                if connection is not None:
                    connection.close()
                continue
            changed = True
            if connection is None:
                log.warning(
                    "Node %s unreachable: %s; next try in %.1f s", address, error, state.backoff
                )
                self._health(address, online=False, error=error)
            else:
                log.info("Node %s connected", address)
                self._health(address, online=True)

    def lost(self, address: str, reason: str, infra_failure: bool, now: float) -> None:
        """The node's connection is gone: it is dropped, a reconnection scheduled with backoff,
        and the store told; an infrastructure failure costs the node a quota step."""
        connection = None
        with self.lock:
            state = self._states.get(address)
            if state is not None:
                if infra_failure:
                    state.penalty = min(MAX_PENALTY, state.penalty + 1)
                state.kills_sent.clear()
                connection, state.connection = state.connection, None
                self._schedule_retry(state, now)
        if connection is not None:
            connection.close()
        self._health(address, online=False, error=reason, infra_failure=infra_failure)

    def _schedule_retry(self, state: NodeState, now: float) -> None:
        cfg = self.settings.dispatch
        state.backoff = min(
            cfg.backoff_max, state.backoff * 2 if state.backoff else cfg.backoff_initial
        )
        state.retry_at = now + state.backoff

    def close_all(self, forget: bool = False) -> None:
        """Close every connection (running tasks are killed); with `forget`, drop them too."""
        with self.lock:
            connections = [s.connection for s in self._states.values() if s.connection]
            if forget:
                for state in self._states.values():
                    state.connection = None
        for connection in connections:
            connection.close()

    # ---- health ----------------------------------------------------------------------------

    def _health(self, address: str, **news: Any) -> None:
        """Tell the store what we learned of a node. It is news for the pages only, so when the
        store is away it is dropped (the next news brings the node's row up to date)."""
        try:
            self.service.node_health(address, **news)
        except StoreUnavailableError:
            log.debug("node %s: health not stored, the store is unreachable", address)

    def note_outcome(self, address: str, outcome: Outcome, state: TaskState) -> None:
        """Infrastructure failures (the task's process killed from outside, its fork server
        gone) cost the node a quota step; a success gives one back."""
        with self.lock:
            node = self._states.get(address)
            if node is None:
                return
            if state is TaskState.SUCCEEDED:
                node.penalty = max(0, node.penalty - 1)
                return
            if outcome.signal is None or outcome.killed or outcome.timed_out:
                return
            node.penalty = min(MAX_PENALTY, node.penalty + 1)
        self._health(address, online=True, infra_failure=True)

    def cancel(self, address: str, task_id: str) -> None:
        """Kill a task on its node for a cancel request, once; a failed send loses the node."""
        with self.lock:
            state = self._states.get(address)
            if state is None or state.connection is None or task_id in state.kills_sent:
                return
            state.kills_sent.add(task_id)
            connection = state.connection
        log.info("Task %s: cancel requested; killing it on %s", task_id, address)
        try:
            connection.kill(task_id)
        except Exception as exc:
            self._on_lost(address, [task_id], f"could not send the kill: {exc}")

    # ---- load ------------------------------------------------------------------------------

    def read_loads(self, now: float) -> None:
        """Ask each connected node for its load over its open connection, every few seconds."""
        every = LOAD_REFRESH_S if self.settings.dispatch.balancer == "load" else LOAD_DISPLAY_S
        with self.lock:
            due = []
            for address, state in self._states.items():
                connection = state.connection
                if connection is None or state.load_reading or now - state.load_at < every:
                    continue
                state.load_reading = True
                state.load_at = now
                due.append((address, connection))
        for address, connection in due:
            threading.Thread(
                target=self._read_load,
                args=(address, connection),
                daemon=True,
                name=f"dirt-load-{address}",
            ).start()

    def _read_load(self, address: str, connection: NodeConnection) -> None:
        try:
            load: list[float] | None = connection.load(timeout=LOAD_REFRESH_S)[0]
        except Exception:
            load = None  # a dead connection is reported by on_lost; a slow one just waits
        self._loads.put((address, load))
        self._wake()

    def handle_loads(self) -> bool:
        """Take the loads read since the last call; True when a node started or stopped
        accepting tasks (so waiting reasons may change: "too loaded")."""
        changed = False
        cfg = self.settings.dispatch
        while True:
            try:
                address, load = self._loads.get_nowait()
            except queue.Empty:
                return changed
            with self.lock:
                state = self._states.get(address)
                if state is None:
                    continue
                state.load_reading = False
                if load is None:
                    continue
                was = state.accepting(cfg.balancer, cfg.load_margin)
                state.load = load
                changed |= state.accepting(cfg.balancer, cfg.load_margin) != was
                online = state.online
            if online:
                self._health(address, online=True, load=load)
