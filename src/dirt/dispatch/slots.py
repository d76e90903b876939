"""Slot bookkeeping: this dispatcher's tasks on their way from the store to the nodes and back.

A task the dispatcher reserved in the store is *held* (still waiting there, cancellable) until a
slot frees on a node that can run it; then it is *launched*: in flight on that node, counted in
the node's running slots, its start to be written in the loop's next store transaction. When its
outcome arrives (on the node's receiver thread) its slot is freed at once, so the receiver can
refill it; the task leaves flight when the loop stores the outcome, or when its node is lost
(then it is requeued as a lost attempt: once sent, a task may have run).

Every method takes `lock`, the one lock over the dispatcher's shared state (the node registry
holds the same one), so a caller can make several transitions one step under ``with lock:``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dirt.dispatch.select import Key, NodeView, pick, reservation_key
from dirt.models import Task


@dataclass
class InFlight:
    """A task sent to a node: what the loop needs to store its start and its outcome."""

    task: Task
    node: str
    attempt: int
    sha256: str
    timeout: float | None
    started: float = 0.0
    slot_freed: bool = False

    @property
    def start(self) -> tuple[str, str, float, int]:
        """(task id, node, started, attempt): the start as Service.dispatch writes it."""
        return (self.task.id, self.node, self.started, self.attempt)


class Slots:
    """Held, in-flight and to-start tasks, and the running count of each node."""

    def __init__(self, lock: threading.RLock, key: Callable[[Task], Key] = reservation_key) -> None:
        self.lock = lock
        self._key = key  # the order held tasks start in (dispatch.select.key_of)
        self._inflight: dict[str, InFlight] = {}
        self._running: Counter[str] = Counter()
        # Reserved in the store by this dispatcher, in reservation order: started the moment a
        # slot frees on a node that can run them, so a node never waits for a store write.
        self._held: deque[Task] = deque()
        # Sent to nodes; their move to running is written in the loop's next transaction.
        self._to_start: list[InFlight] = []
        # Their module vanished (or cannot be read) between reservation and start.
        self._unrunnable: list[tuple[Task, str]] = []

    # ---- reads -----------------------------------------------------------------------------

    def running(self, address: str) -> int:
        with self.lock:
            return self._running[address]

    def running_total(self) -> int:
        """Tasks running on every node."""
        with self.lock:
            return sum(self._running.values())

    def busy(self) -> int:
        """Tasks held or running: what the next reservation must not count again."""
        with self.lock:
            return len(self._held) + sum(self._running.values())

    def idle(self) -> bool:
        """Nothing held, nothing in flight: every task this dispatcher took is stored."""
        with self.lock:
            return not self._held and not self._inflight and not self._to_start

    def has_held(self) -> bool:
        with self.lock:
            return bool(self._held)

    def flight(self, task_id: str) -> InFlight | None:
        with self.lock:
            return self._inflight.get(task_id)

    # ---- transitions -----------------------------------------------------------------------

    def held(self) -> list[Task]:
        with self.lock:
            return list(self._held)

    def hold(self, tasks: Iterable[Task]) -> None:
        """Tasks just reserved in the store join the held ones, in the dispatch order: a task
        of higher priority, or of a record whose turn comes first, goes ahead of those held."""
        new = list(tasks)  # in the store's order already
        if not new:
            return
        with self.lock:
            if self._held and min(map(self._key, new)) < self._key(self._held[-1]):
                self._held = deque(sorted([*self._held, *new], key=self._key))
            else:
                self._held.extend(new)

    def take(self, node: NodeView) -> Task | None:
        """The first held task `node` can run, no longer held; None when there is none."""
        with self.lock:
            index = pick(self._held, node)
            if index is None:
                return None
            task = self._held[index]
            del self._held[index]
            return task

    def unhold(self, runnable: Callable[[Task], bool]) -> list[Task]:
        """Held tasks that are not `runnable`, taken out (to be released in the store)."""
        with self.lock:
            stuck = [t for t in self._held if not runnable(t)]
            for task in stuck:
                self._held.remove(task)
            return stuck

    def launch(self, task: Task, address: str, sha256: str, timeout: float | None) -> InFlight:
        """`task` goes to `address`: in flight, a slot taken, its start to be written."""
        flight = InFlight(task, address, task.attempts + 1, sha256, timeout, time.time())
        with self.lock:
            self._inflight[task.id] = flight
            self._to_start.append(flight)
            self._running[address] += 1
        return flight

    def unrunnable(self, task: Task, reason: str) -> None:
        """`task` (no longer held) cannot be started: the loop fails it with `reason`."""
        with self.lock:
            self._unrunnable.append((task, reason))

    def take_unrunnable(self) -> list[tuple[Task, str]]:
        with self.lock:
            found, self._unrunnable = self._unrunnable, []
            return found

    def take_starts(self) -> list[InFlight]:
        """The launched tasks whose start is not written yet; the caller writes them."""
        with self.lock:
            starts, self._to_start = self._to_start, []
            return starts

    def unwritten(self, starts: Iterable[InFlight]) -> None:
        """`starts` (from take_starts) could not be written: they are written with the next
        ones, those still in flight (a lost node's are requeued through `lose_node`)."""
        with self.lock:
            again = [f for f in starts if self._inflight.get(f.task.id) is f]
            self._to_start = again + self._to_start

    def free_slot(self, flight: InFlight) -> None:
        """The one place a slot frees: once per flight, whichever of its ends comes first."""
        with self.lock:
            if not flight.slot_freed:
                flight.slot_freed = True
                self._running[flight.node] -= 1

    def outcome_arrived(self, task_id: str) -> str | None:
        """A task's outcome came (receiver thread): its slot frees; returns its node's address,
        or None when the task is no longer in flight (its node was lost meanwhile)."""
        with self.lock:
            flight = self._inflight.get(task_id)
            if flight is None or flight.slot_freed:
                return None
            self.free_slot(flight)
            return flight.node

    def finish(self, task_id: str) -> InFlight | None:
        """A task's outcome is being stored: it leaves flight. None when it already left."""
        with self.lock:
            flight = self._inflight.pop(task_id, None)
            if flight is not None:
                self.free_slot(flight)
            return flight

    def refused(self, starts: Iterable[InFlight], started: Iterable[str]) -> list[InFlight]:
        """Of `starts`, those the store did not mark running (cancelled meanwhile) leave flight;
        returns them (still to be killed on their nodes)."""
        ok = set(started)
        refused = []
        with self.lock:
            for flight in starts:
                if flight.task.id not in ok and self.finish(flight.task.id) is not None:
                    refused.append(flight)
        return refused

    def lose_node(
        self, address: str, task_ids: Iterable[str]
    ) -> tuple[list[InFlight], list[InFlight]]:
        """The node at `address` is gone: every task in flight there leaves flight. Returns
        them all, and apart those of them whose start is not written yet (sent, so perhaps run:
        the caller writes their start before requeueing them with the rest)."""
        with self.lock:
            # The node may hold a task its connection never sent (or sent but did not count).
            ids = set(task_ids) | {t for t, f in self._inflight.items() if f.node == address}
            lost = [f for f in map(self.finish, sorted(ids)) if f is not None]
            gone = {f.task.id for f in lost}
            # A start whose task already left flight (its outcome is being stored) stays.
            unwritten = [f for f in self._to_start if f.task.id in gone]
            self._to_start = [f for f in self._to_start if f.task.id not in gone]
            return lost, unwritten

    def drain(self) -> list[InFlight]:
        """Every task still in flight, all leaving it (the dispatcher is stopping)."""
        with self.lock:
            flights = list(self._inflight.values())
            for flight in flights:
                self.finish(flight.task.id)
            return flights
