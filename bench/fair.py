"""Fair share between records: how soon a small record starts behind a big one, and what
picking the next task costs on a long queue; fair order against fifo, in one run.

    .venv/bin/python bench/fair.py [--backlog 20000] [--rounds 3] [--big 1000000]

1. Latency. dirt driven as a user does (`dirt submit`, `dirt serve --no-web`, each a
   subprocess; thread isolation, a local node with 2 slots): a record of `--backlog` trivial
   tasks runs; once it runs flat out, a record of 1 task is submitted (`dirt submit quick -t
   trivial`). Its wait is from its submission (the task's `created`) to its start; "started
   first" counts the backlog's tasks that started in between. Same run, fair then fifo, per
   round; medians over the rounds.
2. Picking. The dispatcher's read of its next window of waiting tasks (128, as it reads them:
   keyset, in the order's index) on a store of 1,000 waiting tasks (10 records) and on one of
   `--big` waiting tasks in 1,000 records (SQLite, bulk-filled, with the turns submission would
   have given them, then ANALYZE). Median of 300 reads each, and the ratio big/small.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dispatch import dirt, make_project
from dirt.config import load_settings
from dirt.db.engine import next_seq, write_transaction
from dirt.db.schema import record_turns, records, tasks
from dirt.db.tasks import waiting_query
from dirt.project import create_project
from dirt.service import Service

ORDERS = ("fair", "fifo")
WINDOW = 128
CHUNK = 20_000


@dataclass
class Latency:
    wait_s: float  # submission to start of the one-task record
    started_first: int  # backlog tasks started in between
    rate: float  # backlog tasks/s while it ran


# ---- 1. latency ----------------------------------------------------------------------------


def latency(root: Path, order: str, backlog: int) -> Latency:
    os.environ["DIRT_DISPATCH_ORDER"] = order  # read by every `dirt` below
    (root / order).mkdir(parents=True)
    project = make_project(root / order, "thread", backlog, 2)
    service = Service(load_settings(project, environ={}))
    try:
        submit = dirt(
            ["submit", "tasks.json"], project, "thread", cwd=project, stdout=subprocess.DEVNULL
        )
        assert submit.wait() == 0, "dirt submit failed"
        serve = dirt(
            ["serve", "--no-web"],
            project,
            "thread",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while service.record_summary("bench").counts["succeeded"] < min(2000, backlog // 4):
                assert time.monotonic() < deadline, "the backlog did not start"
                time.sleep(0.02)
            quick = dirt(
                ["submit", "quick", "-t", "trivial"], project, "thread", stdout=subprocess.DEVNULL
            )
            assert quick.wait() == 0, "dirt submit quick failed"
            (task,) = service.record_detail("quick").tasks
            deadline = time.monotonic() + 900
            while (task := service.task(task.id)).started is None:
                assert time.monotonic() < deadline, f"{order}: the quick task never started"
                time.sleep(0.01)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)
        ran = [t for t in service.record_detail("bench").tasks if t.started is not None]
    finally:
        service.close()
        del os.environ["DIRT_DISPATCH_ORDER"]
    started = task.started
    first = sum(1 for t in ran if task.created < t.started < started)
    times = sorted(t.started for t in ran if t.started is not None)
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return Latency(started - task.created, first, rate)


# ---- 2. picking ----------------------------------------------------------------------------


def filled_store(path: Path, n_records: int, per_record: int) -> Service:
    """A store of waiting tasks, all submitted before any ran: each record's tasks take turns
    0, 1, 2... (what submission gives them), record i created at i."""
    service = Service(load_settings(create_project(path), environ={}))
    with write_transaction(service.engine) as conn:
        seq = next_seq(conn)
        conn.execute(
            insert(records),
            [
                {"id": f"r{r:05d}", "description": "", "created": float(r), "extra": {}, "seq": seq}
                for r in range(n_records)
            ],
        )
        conn.execute(
            insert(record_turns),
            [
                {"record_id": f"r{r:05d}", "priority": 0, "next_slot": per_record}
                for r in range(n_records)
            ],
        )
        rows = []
        for r in range(n_records):
            for i in range(per_record):
                rows.append(
                    {
                        "id": f"r{r:05d}-{i:07d}",
                        "record_id": f"r{r:05d}",
                        "name": "trivial",
                        "kwargs": None,
                        "requires": [],
                        "platform": None,
                        "priority": 0,
                        "created": float(r) + i * 1e-3,
                        "state": "waiting",
                        "attempts": 0,
                        "extra": {},
                        "seq": seq,
                        "turn": i,
                        "record_created": float(r),
                    }
                )
                if len(rows) >= CHUNK:
                    conn.execute(insert(tasks), rows)
                    rows = []
        if rows:
            conn.execute(insert(tasks), rows)
    with service.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return service


def _paired_ms(reads: tuple[Callable[[], object], Callable[[], object]], n: int) -> list[float]:
    """Median ms of each read, the two taken in turn so both see the same machine weather."""
    times: list[list[float]] = [[], []]
    for i in range(n + min(10, n)):
        for read, kept in zip(reads, times, strict=True):
            start = time.perf_counter()
            read()
            if i >= min(10, n):  # the first few warm the caches
                kept.append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def picks(small: Service, big: Service, order: str, n: int = 400) -> list[tuple[float, float]]:
    """(small, big) median ms of: the dispatcher's read of its next window of waiting tasks (as
    it reads them, into Task objects); the same SQL alone; that SQL made to sort instead of
    reading the order's index (SQLite's NOT INDEXED; a few reads)."""
    found = []
    with small.engine.connect() as a, big.engine.connect() as b:
        sql = str(waiting_query(WINDOW, order).compile(a, compile_kwargs={"literal_binds": True}))
        assert "INDEXED BY" in sql
        sorting = re.sub(r"INDEXED BY \w+", "NOT INDEXED", sql)
        assert b.exec_driver_sql(sorting).all() == b.exec_driver_sql(sql).all()
        for text, reads in ((sql, n), (sorting, 3)):
            ms = _paired_ms(
                (
                    lambda text=text: a.exec_driver_sql(text).all(),
                    lambda text=text: b.exec_driver_sql(text).all(),
                ),
                reads,
            )
            found.append((ms[0], ms[1]))
    ms = _paired_ms(
        (lambda: small.waiting_tasks(WINDOW, order), lambda: big.waiting_tasks(WINDOW, order)), n
    )
    return [(ms[0], ms[1]), *found]


# ---- the tables ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_latency:
            runs: dict[str, list[Latency]] = {o: [] for o in ORDERS}
            for i in range(args.rounds):
                for order in ORDERS:
                    runs[order].append(latency(root / f"round{i}", order, args.backlog))
                print(
                    f"round {i + 1}: "
                    + ", ".join(f"{o} {runs[o][-1].wait_s:.2f} s" for o in ORDERS),
                    file=sys.stderr,
                )
            print(latency_table(runs, args.backlog, args.rounds))
        print(file=sys.stderr, flush=True)
        small = filled_store(root / "small", 10, 100)
        print(f"filling {args.big:,} waiting tasks in 1,000 records...", file=sys.stderr)
        started = time.perf_counter()
        big = filled_store(root / "big", 1000, args.big // 1000)
        print(f"  filled in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        found = {o: picks(small, big, o) for o in ORDERS}
        small.close()
        big.close()
        print(pick_table(found, args.big))


def latency_table(runs: dict[str, list[Latency]], backlog: int, rounds: int) -> str:
    lines = [
        f"{backlog:,} trivial tasks running (thread isolation, local node, 2 slots), then a "
        f"record of 1 task; medians of {rounds} rounds",
        f"{'order':<8}{'its task starts after':>22}{'backlog tasks started first':>29}"
        f"{'backlog tasks/s':>17}",
    ]
    for order in ORDERS:
        wait = statistics.median(r.wait_s for r in runs[order])
        first = statistics.median(r.started_first for r in runs[order])
        rate = statistics.median(r.rate for r in runs[order])
        lines.append(f"{order:<8}{wait:>20.2f} s{first:>29,.0f}{rate:>17,.0f}")
    fair = statistics.median(r.wait_s for r in runs["fair"])
    fifo = statistics.median(r.wait_s for r in runs["fifo"])
    verdict = "met" if fair < 1.0 else "NOT met"
    lines.append(f"fifo/fair: {fifo / fair:,.0f}x; goal (fair: starts within 1 s): {verdict}")
    return "\n".join(lines)


def pick_table(found: dict[str, list[tuple[float, float]]], big: int) -> str:
    label = f"{big:,} in 1,000 records"
    lines = [
        f"picking: the dispatcher's read of its next {WINDOW} waiting tasks, median ms (SQLite)",
        f"{'':<38}{'1,000 waiting':>14}{label:>28}{'ratio':>8}{'goal':>8}",
    ]
    kinds = (
        "dispatcher's read (Task objects)",
        "its SQL alone (index, keyset)",
        "same SQL sorting instead",
    )
    for order in ORDERS:
        for i, (kind, (small, large)) in enumerate(zip(kinds, found[order], strict=True)):
            ratio = large / small
            goal = f"{'<= 2x':>8}  {'met' if ratio <= 2 else 'NOT met'}" if i < 2 else ""
            lines.append(
                f"{order + ': ' + kind:<38}{small:>8.3f}{large:>24.3f}{ratio:>11.2f}x{goal}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
