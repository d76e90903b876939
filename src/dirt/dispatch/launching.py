"""Sending reserved tasks to nodes, writing their starts, and sending cancels.

A part of `Dispatcher` (dispatch.loop), kept in a module of its own: the receiver threads call
`_start_reserved` when a slot frees, the loop calls the rest in its steps.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from dirt.config import Settings
from dirt.dispatch.membership import Membership
from dirt.dispatch.nodes import Nodes
from dirt.dispatch.select import NodeView, fill_order, satisfies
from dirt.dispatch.slots import InFlight, Slots
from dirt.errors import NotFoundError, StoreUnavailableError
from dirt.logs import info_lines
from dirt.models import Task
from dirt.service import Finished, Service

log = logging.getLogger("dirt")


class Launching:
    """Starts and cancels, for `Dispatcher`."""

    # Provided by Dispatcher.
    service: Service
    settings: Settings
    slots: Slots
    nodes: Nodes
    membership: Membership
    lock: threading.RLock
    _stopping: threading.Event
    _wake: threading.Event
    _cursor: int
    _pending_stale: bool
    _check_cancels: bool

    if TYPE_CHECKING:

        def _views(self, connecting_counts: bool = False) -> list[NodeView]: ...
        def _on_lost(self, address: str, task_ids: list[str], reason: str) -> None: ...

    def _start_reserved(self, only: str | None = None) -> int:
        """Send held tasks to free slots of nodes that can run them, round robin.

        Called from the loop, or from a node's receiver thread (then `only` names the node
        whose slot just freed). Returns how many tasks went.
        """
        if not self.membership.lease.valid():
            return 0  # another master may be taking our claims over: start nothing
        with self.lock:
            if not self.slots.has_held():
                return 0
            if only is None:
                views = self._views()
            elif self.nodes.launchable(only):
                views = [self.nodes.view(only, self.slots.running)]
            else:
                return 0  # no longer driven, being handed over, or its connection is going
            sent = 0
            for view in fill_order(views, self._cursor):
                task = self.slots.take(view)
                if task is None:
                    continue
                self._launch(task, view.address)
                sent += 1
                if not self.slots.has_held():
                    break
            if sent and only is None:
                self._cursor += 1
            return sent

    def _launch(self, task: Task, address: str) -> None:
        """Send `task` to `address` (lock held). A module that cannot be read fails the task;
        a send that fails loses the node (its lost handler holds the task again)."""
        try:
            module = self.service.modules.load(task.name)
        except NotFoundError as exc:
            self._unrunnable(task, str(exc))
            return
        except OSError as exc:  # unreadable: no permission, an I/O error, a folder
            self._unrunnable(task, f"task module {task.name} cannot be read: {exc}")
            return
        timeout = task.timeout or self.settings.dispatch.timeout or None
        self.slots.launch(task, address, module.sha256, timeout)  # logged by _take_starts
        connection = self.nodes.connection(address)
        try:
            if connection is None:
                raise ConnectionError("not connected")
            connection.run(
                task.id,
                task.name,
                module.source,
                module.sha256,
                task.kwargs or {},
                timeout,
                path=shown_path(module.path, self.settings.project_dir),
            )
        except Exception as exc:
            self._on_lost(address, [task.id], f"could not send task: {exc}")

    def _unrunnable(self, task: Task, reason: str) -> None:
        self.slots.unrunnable(task, reason)
        self._wake.set()  # the loop fails it

    def _release_unusable(self) -> None:
        """Reserved tasks that no usable node can run now (all of them once stopping) go back
        to every master."""
        with self.lock:
            usable = [] if self._stopping.is_set() else [v for v in self._views() if v.usable]
            stuck = self.slots.unhold(lambda t: any(satisfies(t, v) for v in usable))
        if stuck:
            try:
                self.service.release([t.id for t in stuck])
            except StoreUnavailableError:
                self.slots.hold(stuck)  # given back on a later step
                raise
            self._pending_stale = True

    def _fail_unrunnable(self) -> None:
        found = self.slots.take_unrunnable()
        for index, (task, reason) in enumerate(found):
            try:
                self.service.release([task.id])
                self.service.fail_unrunnable(task.id, reason)
            except StoreUnavailableError:
                for again in found[index:]:
                    self.slots.unrunnable(*again)
                raise
            log.error("Task %s failed: %s", task.id, reason)

    # ---- starts and cancels --------------------------------------------------------------

    def _take_starts(self) -> list[InFlight]:
        """The tasks sent to nodes since the last step, their start still to write."""
        return self._note_starts(self.slots.take_starts())

    def _note_starts(self, starts: list[InFlight]) -> list[InFlight]:
        """Log the tasks sent to nodes (in one record: see info_lines); they wait no more."""
        info_lines(log, [f"{f.task.id} -> {f.node}" for f in starts])
        return starts

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
        for flight in self.slots.refused(starts, started):
            log.info(
                "Task %s was cancelled before it started; killing it on %s",
                flight.task.id,
                flight.node,
            )
            connection = self.nodes.connection(flight.node)
            if connection is not None:
                try:
                    connection.kill(flight.task.id)
                except Exception:
                    log.debug("kill of %s not sent: its node is going away", flight.task.id)

    def _send_cancels(self) -> None:
        """Kill, on their nodes, the running tasks of ours that someone asked to cancel."""
        requested = self.service.cancel_requested()
        self._check_cancels = False
        for task_id, attempt in requested:
            flight = self.slots.flight(task_id)
            if flight is not None and flight.attempt == attempt:
                self.nodes.cancel(flight.node, task_id)


# Cached: pathlib's arithmetic, for every task sent, was 5% of a busy master's time.
@functools.lru_cache(maxsize=1024)
def shown_path(path: Path, project_dir: Path) -> str:
    """A module's path as messages name it: relative to the project when inside it."""
    try:
        return str(path.relative_to(project_dir))
    except ValueError:
        return str(path)
