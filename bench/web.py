"""Time the web pages and API lists on a small store and a big one; print median and p99.

    .venv/bin/python bench/web.py                 # 1,000 tasks vs 100,000 records/1,000,000 tasks
    .venv/bin/python bench/web.py --records 10000 # a quicker look

Data is made by bulk INSERTs in one transaction (the triggers of migrations 0002 and 0004 keep
the per-record counts and the search index as they would in real use). Requests go through the
real app in process (starlette's TestClient), so the times are server times without a network.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import insert

from dirt.config import load_settings
from dirt.db.engine import next_seq, write_transaction
from dirt.db.schema import attempts, nodes, records, tasks
from dirt.documents import make_cursor
from dirt.project import create_project
from dirt.service import Service

NAMES = [f"suite.test_{n}" for n in ("build", "unit", "lint", "docs", "perf", "gpu", "io", "net")]
STATES = ["succeeded"] * 86 + ["failed"] * 10 + ["waiting"] * 3 + ["cancelled"]
BASE = 1_300_000_000.0
CHUNK = 20_000
# Under 3 characters there is no trigram to look up: the search scans (not held to the goal).
SHORT_SEARCH = "/?q= (search, 2 characters, no match)"


def fill(service: Service, n_records: int, per_record: int, say=print) -> dict:
    rng = random.Random(4)
    started = time.perf_counter()
    created_last = BASE
    with write_transaction(service.engine) as conn:
        seq = next_seq(conn)
        conn.execute(
            insert(nodes),
            [
                {
                    "address": f"node{i}",
                    "enabled": True,
                    "online": True,
                    "slots": 8,
                    "sys_info": {"hostname": f"node{i}", "cpu_count": 8},
                    "added": BASE,
                    "last_seen": time.time(),
                    "infra_failures": 0,
                    "seq": seq,
                }
                for i in range(8)
            ],
        )
        record_rows, task_rows, attempt_rows = [], [], []
        for r in range(n_records):
            created = BASE + r * 60.0
            created_last = created
            rid = f"r{r:07d}"
            record_rows.append(
                {
                    "id": rid,
                    "description": f"revision {r}: change things",
                    "created": created,
                    "extra": {"sha": uuid.uuid4().hex},
                    "seq": seq,
                }
            )
            for t in range(per_record):
                state = rng.choice(STATES)
                finished = state in ("succeeded", "failed")
                start = created + 5 + t
                tid = uuid.uuid4().hex
                task_rows.append(
                    {
                        "id": tid,
                        "record_id": rid,
                        "name": NAMES[t % len(NAMES)],
                        "kwargs": None,
                        "requires": [],
                        "platform": "linux",
                        "priority": 0,
                        "timeout": None,
                        "max_attempts": None,
                        "created": created,
                        "state": state,
                        "node": f"node{t % 8}" if finished else None,
                        "attempts": 1 if finished else 0,
                        "started": start if finished else None,
                        "completed": start + rng.uniform(1, 90) if finished else None,
                        "results": {"success": state == "succeeded"} if finished else None,
                        "reason": "AssertionError: 2 != 3" if state == "failed" else None,
                        "waiting_reason": None,
                        "module_sha256": None,
                        "output": None,
                        "extra": {},
                        "claimed_by": None,
                        "seq": seq,
                    }
                )
                if finished:
                    attempt_rows.append(
                        {
                            "task_id": tid,
                            "number": 1,
                            "node": f"node{t % 8}",
                            "started": start,
                            "completed": start + 1,
                            "outcome": state,
                        }
                    )
            if len(task_rows) >= CHUNK:
                conn.execute(insert(records), record_rows)
                conn.execute(insert(tasks), task_rows)
                conn.execute(insert(attempts), attempt_rows)
                record_rows, task_rows, attempt_rows = [], [], []
                done = (r + 1) * per_record
                if done % 200_000 < per_record:
                    say(f"  {done:,} tasks ({time.perf_counter() - started:.0f} s)")
        if record_rows:
            conn.execute(insert(records), record_rows)
            conn.execute(insert(tasks), task_rows)
            conn.execute(insert(attempts), attempt_rows)
        # A little live work: a few running tasks in the newest records.
        conn.execute(
            tasks.update()
            .where(tasks.c.record_id == f"r{n_records - 1:07d}")
            .values(state="running", node="node0", started=time.time(), seq=seq)
        )
    with service.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    say(
        f"  filled {n_records:,} records, {n_records * per_record:,} tasks in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return {"last_created": created_last, "n_records": n_records}


def endpoints(service: Service, info: dict) -> dict[str, str]:
    n = info["n_records"]
    deep_record = max(int(n * 0.1), min(50, n - 1))  # 90% of the way down, a full page left
    cursor = make_cursor(BASE + deep_record * 60.0, f"r{deep_record:07d}")
    history = service.task_runs(NAMES[0], 1, (BASE + deep_record * 60.0 + 1, "g"))
    task_cursor = make_cursor(history[0].created, history[0].id) if history else ""
    mid = f"r{n // 2:07d}"
    # The feed after a few ordinary writes (the bulk fill is one huge transaction).
    since = service.current_seq()
    for i in range(5):
        service.submit(
            [
                {"_id": f"new{i}", "type": "record", "created": time.time()},
                {"type": "task", "record_id": f"new{i}", "name": "examples.simple"},
            ]
        )
    return {
        "/ (first page)": "/",
        "/ (deep page)": f"/?before={cursor}",
        "/?state=failed": "/?state=failed",
        "/?state=running": "/?state=running",
        "/records/{id}": f"/records/{mid}",
        "/tasks/{name} (first)": f"/tasks/{NAMES[0]}",
        "/tasks/{name} (deep)": f"/tasks/{NAMES[0]}?before={task_cursor}",
        "/nodes": "/nodes",
        "GET /api/records (first)": "/api/records",
        "GET /api/records (deep)": f"/api/records?before={cursor}",
        "GET /api/records/{id}": f"/api/records/{mid}",
        "GET /api/tasks?name= (first)": f"/api/tasks?name={NAMES[0]}",
        "GET /api/tasks?name= (deep)": f"/api/tasks?name={NAMES[0]}&before={task_cursor}",
        "GET /api/changes?since=": f"/api/changes?since={since}&limit=100",
        "GET /metrics": "/metrics",
        "/?q= (search, newest match)": f"/?q=revision {n - 3}",
        "/?q= (search, old match)": f"/?q=revision {n // 10}",
        "/?q= (search, all match)": "/?q=change things",
        "GET /api/records?q= (search, old match)": f"/api/records?q=revision {n // 10}",
        SHORT_SEARCH: "/?q=zz",
    }


def measure(service: Service, info: dict, repeat: int) -> dict[str, tuple[float, float]]:
    from fastapi.testclient import TestClient

    from dirt.web.app import create_app

    results = {}
    with TestClient(create_app(service), client=("127.0.0.1", 1)) as client:
        for label, url in endpoints(service, info).items():
            for _ in range(3):  # warm up
                assert client.get(url).status_code == 200, (label, url)
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200
            times.sort()
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            results[label] = (statistics.median(times), p99)
    return results


def store(folder: Path, name: str) -> Service:
    project = create_project(folder / name)
    settings = load_settings(project, overrides={"log": {"file": ""}}, environ={})
    return Service(settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--tasks-per-record", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dirt-bench-") as tmp:
        folder = Path(tmp)
        small_records = max(1, 1000 // args.tasks_per_record)
        print(f"small store: {small_records} records x {args.tasks_per_record} tasks")
        small = store(folder, "small")
        small_info = fill(small, small_records, args.tasks_per_record)
        small_times = measure(small, small_info, args.repeat)
        small.close()
        total = args.records * args.tasks_per_record
        print(f"big store: {args.records:,} records x {args.tasks_per_record} tasks = {total:,}")
        big = store(folder, "big")
        big_info = fill(big, args.records, args.tasks_per_record)
        big_times = measure(big, big_info, args.repeat)
        big.close()
    small_label = f"{small_records * args.tasks_per_record:,} tasks"
    big_label = f"{total:,} tasks"
    print()
    print(
        f"| page | {small_label}: median / p99 ms | {big_label}: median / p99 ms "
        "| ratio of medians |"
    )
    print("| --- | ---: | ---: | ---: |")
    worst = 0.0
    for label, (s_med, s_p99) in small_times.items():
        b_med, b_p99 = big_times[label]
        ratio = b_med / s_med if s_med else float("inf")
        if label != SHORT_SEARCH:
            worst = max(worst, ratio)
        print(f"| {label} | {s_med:.1f} / {s_p99:.1f} | {b_med:.1f} / {b_p99:.1f} | {ratio:.2f} |")
    slowest = max(v[0] for k, v in big_times.items() if k != SHORT_SEARCH)
    print(f"\nslowest median on the big store: {slowest:.1f} ms; worst ratio: {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
