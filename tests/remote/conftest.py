"""Fixtures for the node agent tests: real execnet popen gateways, nothing mocked."""

from __future__ import annotations

import hashlib
import itertools
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dirt.blobs import BlobStore
from dirt.dispatch.connection import NodeConnection, Outcome, popen_spec
from dirt.dispatch.incoming import Limits

_ids = itertools.count(1)


class Collector:
    """Receives on_done / on_lost calls and lets a test wait for them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.outcomes: dict[str, Outcome] = {}
        self.lost: list[tuple[list[str], str]] = []
        # task id -> (offset, bytes, monotonic time it came) of each output chunk
        self.output: dict[str, list[tuple[int, bytes, float]]] = {}
        self.done_at: dict[str, float] = {}  # task id -> monotonic time its outcome came
        self.output_delay = 0.0  # seconds on_output takes: a master slow to store output

    def on_output(self, task_id: str, offset: int, data: bytes) -> None:
        if self.output_delay:
            time.sleep(self.output_delay)
        with self.cond:
            self.output.setdefault(task_id, []).append((offset, data, time.monotonic()))
            self.cond.notify_all()

    def output_of(self, task_id: str) -> bytes:
        """The output bytes that came, in order (gaps left out)."""
        with self.cond:
            return b"".join(data for _, data, _ in self.output.get(task_id, []))

    def on_done(self, outcome: Outcome) -> None:
        with self.cond:
            self.done_at[outcome.task_id] = time.monotonic()
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
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def make_node(blobs: BlobStore) -> Iterator[Callable[..., Node]]:
    """Factory: make_node("process"|"thread", streams=False, limits=None, blobs=None) -> an
    open Node, closed at teardown. With `streams`, output chunks are collected and attachments
    stored in `blobs` (default: the `blobs` fixture's store)."""
    default_blobs = blobs
    made: list[NodeConnection] = []

    def make(
        isolation: str,
        streams: bool = False,
        limits: Limits | None = None,
        blobs: BlobStore | None = None,
    ) -> Node:
        collector = Collector()
        store = blobs or default_blobs
        conn = NodeConnection(
            popen_spec(),
            isolation,
            collector.on_done,
            collector.on_lost,
            on_output=collector.on_output if streams else None,
            blobs=store if streams else None,
            limits=limits,
        )
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
