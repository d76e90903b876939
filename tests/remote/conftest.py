"""Fixtures for the node agent tests: real execnet popen gateways, nothing mocked."""

from __future__ import annotations

import hashlib
import itertools
import textwrap
import threading
from collections.abc import Callable, Iterator

import pytest

from dirt.dispatch.connection import NodeConnection, Outcome, popen_spec

_ids = itertools.count(1)


class Collector:
    """Receives on_done / on_lost calls and lets a test wait for them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.outcomes: dict[str, Outcome] = {}
        self.lost: list[tuple[list[str], str]] = []

    def on_done(self, outcome: Outcome) -> None:
        with self.cond:
            self.outcomes[outcome.task_id] = outcome
            self.cond.notify_all()

    def on_lost(self, task_ids: list[str], reason: str) -> None:
        with self.cond:
            self.lost.append((task_ids, reason))
            self.cond.notify_all()

    def wait(self, task_id: str, timeout: float = 20) -> Outcome:
        with self.cond:
            if not self.cond.wait_for(lambda: task_id in self.outcomes, timeout):
                raise AssertionError(f"no outcome for {task_id} within {timeout}s")
            return self.outcomes[task_id]

    def wait_lost(self, timeout: float = 20) -> tuple[list[str], str]:
        with self.cond:
            if not self.cond.wait_for(lambda: self.lost, timeout):
                raise AssertionError(f"on_lost not called within {timeout}s")
            return self.lost[0]


class Node:
    """A NodeConnection with its Collector and helpers to run task sources."""

    def __init__(self, conn: NodeConnection, collector: Collector) -> None:
        self.conn = conn
        self.collector = collector

    def start(
        self,
        source: str,
        kwargs: dict | None = None,
        timeout: float | None = None,
        name: str = "tests.task",
    ) -> str:
        source = textwrap.dedent(source)
        sha = hashlib.sha256(source.encode()).hexdigest()
        task_id = f"t{next(_ids)}"
        self.conn.run(task_id, name, source, sha, kwargs or {}, timeout)
        return task_id

    def wait(self, task_id: str, timeout: float = 20) -> Outcome:
        return self.collector.wait(task_id, timeout)

    def run(self, source: str, kwargs: dict | None = None, **options: object) -> Outcome:
        return self.wait(self.start(source, kwargs, **options))  # type: ignore[arg-type]


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def make_node() -> Iterator[Callable[[str], Node]]:
    """Factory: make_node("process"|"thread") -> an open Node, closed at teardown."""
    made: list[NodeConnection] = []

    def make(isolation: str) -> Node:
        collector = Collector()
        conn = NodeConnection(popen_spec(), isolation, collector.on_done, collector.on_lost)
        made.append(conn)
        conn.open(timeout=30)
        return Node(conn, collector)

    yield make
    for conn in made:
        conn.close()


@pytest.fixture(params=["process", "thread"])
def node(request: pytest.FixtureRequest, make_node: Callable[[str], Node]) -> Node:
    return make_node(request.param)


@pytest.fixture
def process_node(make_node: Callable[[str], Node]) -> Node:
    return make_node("process")


@pytest.fixture
def thread_node(make_node: Callable[[str], Node]) -> Node:
    return make_node("thread")
