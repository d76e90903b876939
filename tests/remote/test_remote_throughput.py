"""Throughput smoke check: prints tasks/s per isolation mode; asserts only a low floor.

Run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from dirt.dispatch.connection import NodeConnection, Outcome, popen_spec

TRIVIAL = "def execute(n):\n    return {'success': True, 'n': n}\n"
SHA = hashlib.sha256(TRIVIAL.encode()).hexdigest()
TASKS = 500
SLOTS_PER_NODE = 1  # two nodes: two slots in all, as on a 2-core box


class Pump:
    """Keeps SLOTS_PER_NODE tasks in flight per connection until TASKS are done."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next = 0
        self.finished = 0
        self.failures: list[Outcome] = []
        self.all_done = threading.Event()
        self.conns: list[NodeConnection] = []

    def submit(self, conn: NodeConnection) -> None:
        with self.lock:
            if self.next >= TASKS:
                return
            n = self.next
            self.next += 1
        conn.run(f"t{n}", "bench.trivial", TRIVIAL, SHA, {"n": n}, None)

    def on_done_for(self, index: int):
        def on_done(outcome: Outcome) -> None:
            with self.lock:
                self.finished += 1
                if outcome.error is not None:
                    self.failures.append(outcome)
                if self.finished == TASKS:
                    self.all_done.set()
            self.submit(self.conns[index])

        return on_done


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_throughput(isolation: str, capsys: pytest.CaptureFixture[str]) -> None:
    pump = Pump()
    lost: list[object] = []
    for i in range(2):
        conn = NodeConnection(
            popen_spec(), isolation, pump.on_done_for(i), lambda ids, why: lost.append(why)
        )
        pump.conns.append(conn)
    try:
        for conn in pump.conns:
            conn.open()
        start = time.perf_counter()
        for conn in pump.conns:
            for _ in range(SLOTS_PER_NODE):
                pump.submit(conn)
        assert pump.all_done.wait(60)
        elapsed = time.perf_counter() - start
    finally:
        for conn in pump.conns:
            conn.close()
    assert pump.failures == []
    assert lost == []
    rate = TASKS / elapsed
    with capsys.disabled():
        print(
            f"\n{isolation}: {TASKS} trivial tasks, 2 nodes x {SLOTS_PER_NODE} slot: "
            f"{rate:,.0f} tasks/s"
        )
    assert rate > 50
