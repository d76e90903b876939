"""Dispatch throughput: dirt end to end vs raw execnet, side by side in one run.

    .venv/bin/python bench/dispatch.py [--tasks 2000] [--slots 2]

Raw execnet: the same number of trivial calls (remote_exec + receive) over 2 persistent popen
gateways, one caller thread each. dirt: the same number of trivial tasks submitted to a local
node with 2 slots, from submission until every result is stored, for each isolation mode; then
the submit-to-start delay of single tasks on an idle server.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import execnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dirt.config import load_settings
from dirt.dispatch.loop import Dispatcher
from dirt.dispatch.runner import probe
from dirt.project import create_project
from dirt.service import Service

TRIVIAL_MODULE = "def execute():\n    return {'success': True}\n"
TRIVIAL_CALL = "channel.send({'success': True})"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_execnet(n: int, gateways: int = 2) -> dict[str, float]:
    group = execnet.Group()
    gws = [group.makegateway(f"popen//python={sys.executable}") for _ in range(gateways)]
    for gw in gws:  # warm: the first remote_exec pays for imports
        gw.remote_exec(TRIVIAL_CALL).receive()
    latencies: list[float] = []
    lock = threading.Lock()

    def caller(gw: execnet.Gateway, count: int) -> None:
        mine = []
        for _ in range(count):
            start = time.perf_counter()
            gw.remote_exec(TRIVIAL_CALL).receive()
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(gw, n // gateways)) for gw in gws]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    group.terminate(timeout=5)
    return {
        "rate": len(latencies) / elapsed,
        "median": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
    }


def make_service(root: Path, isolation: str, slots: int) -> Service:
    project = create_project(root / f"bench-{isolation}")
    (project / "tasks" / "trivial.py").write_text(TRIVIAL_MODULE)
    settings = load_settings(
        project,
        overrides={
            "dispatch": {"isolation": isolation, "poll_interval": 0.05},
            "log": {"file": ""},
        },
        environ={},
    )
    service = Service(settings)
    service.save_node("local", probe("local", settings.nodes), slots=slots)
    return service


def start_dispatcher(service: Service) -> tuple[Dispatcher, threading.Thread]:
    dispatcher = Dispatcher(service)
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    dispatcher.ready.wait(30)
    # Warm the node's connection and the fork server before timing.
    service.submit_tasks("warm", ["trivial"])
    wait_done(service, "warm")
    return dispatcher, thread


def wait_done(service: Service, record_id: str, timeout: float = 600) -> None:
    """Wait until the record has no waiting or running task, checking every 5 ms (one indexed
    read of the per-record counts: it costs the dispatcher nothing worth measuring)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = service.record_summary(record_id)
        if detail.counts["waiting"] + detail.counts["running"] == 0:
            return
        time.sleep(0.005)
    raise RuntimeError("tasks did not finish in time")


def dirt_end_to_end(root: Path, isolation: str, n: int, slots: int) -> dict[str, float]:
    service = make_service(root, isolation, slots)
    dispatcher, thread = start_dispatcher(service)
    docs = [{"_id": "bench", "type": "record"}] + [
        {"type": "task", "record_id": "bench", "name": "trivial"} for _ in range(n)
    ]
    start = time.perf_counter()
    submitted = time.time()
    service.submit(docs)
    wait_done(service, "bench")
    elapsed = time.perf_counter() - start
    tasks = service.record_detail("bench").tasks
    assert all(t.state.value == "succeeded" for t in tasks), "a benchmark task failed"
    runs = [t.completed - t.started for t in tasks]
    e2e = [t.completed - submitted for t in tasks]
    idle = submit_to_start(service)
    dispatcher.stop()
    thread.join(30)
    service.close()
    return {
        "rate": n / elapsed,
        "median": statistics.median(runs),
        "p99": percentile(runs, 0.99),
        "e2e_p50": statistics.median(e2e),
        "idle_start": statistics.median(idle),
    }


def submit_to_start(service: Service, samples: int = 40) -> list[float]:
    delays = []
    for i in range(samples):
        time.sleep(0.02)
        before = time.time()
        (task,) = service.submit_tasks(f"idle{i}", ["trivial"]).tasks
        wait_done(service, f"idle{i}")
        delays.append(service.task(task.id).started - before)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    raw = raw_execnet(args.tasks)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for isolation in ("thread", "process"):
            results[isolation] = dirt_end_to_end(Path(tmp), isolation, args.tasks, args.slots)
    ms = 1000
    print(f"{args.tasks} trivial tasks, local node with {args.slots} slots, 2 raw gateways")
    print(
        f"{'':<28}{'tasks/s':>9}{'median ms':>11}{'p99 ms':>9}{'vs raw':>8}"
        f"{'idle submit->start ms':>23}"
    )
    print(
        f"{'raw execnet (2 gateways)':<28}{raw['rate']:>9.0f}{raw['median'] * ms:>11.2f}"
        f"{raw['p99'] * ms:>9.2f}{1:>7.2f}x{'-':>23}"
    )
    for isolation, r in results.items():
        print(
            f"{'dirt, ' + isolation + ' isolation':<28}{r['rate']:>9.0f}"
            f"{r['median'] * ms:>11.2f}{r['p99'] * ms:>9.2f}{r['rate'] / raw['rate']:>7.2f}x"
            f"{r['idle_start'] * ms:>23.2f}"
        )
    print("latency: dirt = node round trip per task (started -> completed); raw = one call")
    print("goals: thread >= 0.5x raw, process >= 500 tasks/s, idle submit->start <= 5 ms")


if __name__ == "__main__":
    main()
