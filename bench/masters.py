"""Several masters on one PostgreSQL store: takeover time and throughput, measured in one run.

    .venv/bin/python bench/masters.py [--rounds 3] [--tasks 4000] [--slots 16] [--sleep 0.02]
                                      [--lease 15] [--takeovers 2] [--samples 30]

A PostgreSQL server of the benchmark's own (tests/postgres.py), a fresh database per run, four
local nodes (local, local-1..3), thread isolation; every master is a real `dirt serve --no-web`.

- Takeover: two masters, one of them in a pid namespace of its own (`unshare`): to the other it
  is on another machine, so it is known dead only when its lease runs out. It is killed with -9
  while it runs tasks (0.5 s each); measured is the time from the kill to the survivor starting
  again one of the tasks the dead master ran (their attempts lost), against the goal lease + 5 s,
  and to the survivor running tasks on the dead one's nodes. Then the same with both masters on
  one machine, where the survivor sees the killed pid gone (no lease to wait).
- Throughput: the same N tasks that sleep `--sleep` seconds, run by one master driving the four
  nodes, then by two masters driving two each, in the same round; tasks/s from the first start
  to the last result stored, and CPU per task of the masters, of the nodes (the masters'
  descendants) and of PostgreSQL. Ratios are medians of each round's ratio.
- Submit-to-start across processes, on an idle system: one master driving the four idle nodes;
  this process submits one task at a time (a random pause of 0.2-0.4 s between, so as not to
  keep step with any poll) and reads back when the master sent it to a node (the attempt's
  start, stamped by the master: same machine, same clock). PostgreSQL wakes the master by
  LISTEN/NOTIFY; the baseline is the same on SQLite, which polls the change sequence every
  `poll_interval` (0.05 s, the default). Measured from the submit call and from its commit.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dispatch import cpu_seconds  # bench/dispatch.py
from sqlalchemy import func, select

from dirt.config import NodeDefaults, load_settings
from dirt.db.schema import attempts
from dirt.dispatch.runner import probe
from dirt.service import Service
from tests.conftest import wait_for
from tests.dispatch.masters import shares
from tests.postgres import PostgresServer

DIRT = str(Path(sys.executable).with_name("dirt"))
NAP = """\
import time

def execute(seconds=0.02):
    time.sleep(seconds)
    return {"success": True}
"""
NODES = ["local", "local-1", "local-2", "local-3"]


@dataclass
class Rate:
    rate: float
    master_ms: float  # CPU per task: the masters themselves
    node_ms: float  # their descendants (the local nodes' processes)
    store_ms: float  # PostgreSQL (its server processes, the submission's inserts included)
    master_busy: float  # the busiest master's CPU over the run's wall time (1.0: one core)
    machine_busy: float  # every core of the machine, any process (1.0: all cores busy)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of every core since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


class Bench:
    def __init__(self, root: Path, server: PostgresServer, slots: int) -> None:
        self.root = root
        self.server = server
        self.slots = slots
        self.project = root / "proj"
        subprocess.run([DIRT, "create", str(self.project)], check=True, capture_output=True)
        (self.project / "tasks" / "nap.py").write_text(NAP)
        self.info = probe("local", NodeDefaults())
        self.runs = 0

    @contextmanager
    def store(
        self, sqlite: bool = False, **dispatch: Any
    ) -> Iterator[tuple[Service, dict[str, str]]]:
        """A fresh database (PostgreSQL, or a SQLite file) with the four nodes; the environment
        of a master on it."""
        if sqlite:
            url = f"sqlite:///{self.root / f'store-{self.runs}-{random.getrandbits(32):x}.sqlite'}"
        else:
            url = self.server.new_database()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
        env.update(DIRT_DATABASE_URL=url, DIRT_LOG_FILE="", DIRT_DISPATCH_ISOLATION="thread")
        env.update({f"DIRT_DISPATCH_{k.upper()}": str(v) for k, v in dispatch.items()})
        overrides = {"project": {"database_url": url}, "log": {"file": ""}}
        service = Service(load_settings(self.project, overrides=overrides, environ={}))
        for address in NODES:
            service.save_node(address, self.info, slots=self.slots)
        try:
            yield service, env
        finally:
            service.close()

    def master(self, env: dict[str, str], own_machine: bool = False) -> subprocess.Popen[bytes]:
        command = [DIRT, "serve", "--no-web"]
        if own_machine:
            command = ["unshare", "--pid", "--fork", "--kill-child", *command]
        self.runs += 1
        out = (self.root / f"master-{self.runs}.out").open("w")
        return subprocess.Popen(
            command, cwd=self.project, env=env, stdout=out, stderr=subprocess.STDOUT
        )

    def postmaster(self) -> int:
        return int((self.server.data / "postmaster.pid").read_text().split()[0])


def submit(service: Service, record: str, n: int, seconds: float) -> list[str]:
    docs: list[dict[str, Any]] = [{"_id": record, "type": "record"}]
    docs += [
        {"type": "task", "record_id": record, "name": "nap", "kwargs": {"seconds": seconds}}
        for _ in range(n)
    ]
    return [t.id for t in service.submit(docs).tasks]


def stop(masters: list[subprocess.Popen[bytes]]) -> None:
    for master in masters:
        if master.poll() is None:
            master.send_signal(signal.SIGTERM)
    for master in masters:
        try:
            master.wait(60)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()


def inner_pid(process: subprocess.Popen[bytes]) -> int:
    """`dirt serve`'s pid under unshare (pid 1 of its namespace)."""
    path = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    found = wait_for(lambda: path.read_text().split(), timeout=10, what="dirt serve under unshare")
    return int(found[0])


# ---- throughput ----------------------------------------------------------------------------


def throughput(bench: Bench, masters: int, n: int, seconds: float) -> Rate:
    with bench.store(lease=15) as (service, env):
        running = [bench.master(env) for _ in range(masters)]
        try:
            want = sorted([len(NODES) // masters] * masters)
            wait_for(
                lambda: shares(service) == want,
                timeout=60,
                what=f"{masters} master(s) sharing nodes",
            )
            wait_for(
                lambda: all(n.online for n in service.nodes()),
                timeout=60,
                what="the nodes to connect",
            )
            before = [cpu_seconds(m.pid) for m in running], cpu_seconds(bench.postmaster())
            machine, began = machine_cpu(), time.monotonic()
            ids = submit(service, "r", n, seconds)
            # Read rarely: on 2 cores this process's reads would take CPU from the masters.
            wait_for(
                lambda: service.metrics()["tasks"].get("succeeded", 0) == n,
                timeout=600,
                interval=0.25,
                what="the run",
            )
            after = [cpu_seconds(m.pid) for m in running], cpu_seconds(bench.postmaster())
            wall, machine_after = time.monotonic() - began, machine_cpu()
        finally:
            stop(running)
        tasks = service.tasks(ids)
    assert all(t.state.value == "succeeded" and t.started and t.completed for t in tasks)
    elapsed = max(t.completed or 0 for t in tasks) - min(t.started or 0 for t in tasks)
    master = sum(a[0] - b[0] for a, b in zip(after[0], before[0], strict=True))
    node = sum(a[1] - b[1] for a, b in zip(after[0], before[0], strict=True))
    store = sum(after[1]) - sum(before[1])
    busiest = max(a[0] - b[0] for a, b in zip(after[0], before[0], strict=True)) / wall
    machine_busy = (machine_after[0] - machine[0]) / (machine_after[1] - machine[1])
    return Rate(
        n / elapsed, 1000 * master / n, 1000 * node / n, 1000 * store / n, busiest, machine_busy
    )


# ---- takeover ------------------------------------------------------------------------------


@dataclass
class Takeover:
    tasks_s: float  # kill -9 -> one of the tasks the dead master ran starts again
    nodes_s: float  # kill -9 -> a task starts on one of the dead master's nodes


def takeover(bench: Bench, lease: float, own_machine: bool) -> Takeover:
    """Seconds from kill -9 of one of two masters to the survivor running its tasks again."""
    with bench.store(lease=lease) as (service, env):
        survivor = bench.master(env)
        wait_for(
            lambda: shares(service) == [4], timeout=60, what="the survivor to drive every node"
        )
        settled = time.monotonic() + lease  # it judges leases once it held its own that long
        victim = bench.master(env, own_machine)
        try:
            wait_for(lambda: shares(service) == [2, 2], timeout=60, what="two nodes each")
            ids = submit(service, "r", 2000, 0.5)
            time.sleep(max(0.0, settled - time.monotonic()))
            (theirs,) = [d.nodes for d in service.dispatchers() if d.pid != survivor.pid]
            wait_for(
                lambda: any(
                    t.state.value == "running" and t.node in theirs for t in service.tasks(ids[:64])
                ),
                timeout=60,
                what="the victim running tasks",
            )
            os.kill(inner_pid(victim) if own_machine else victim.pid, signal.SIGKILL)
            killed = time.time()
            victim.wait(30)
            # The dead master's tasks, as the store has them: running on its nodes.
            lost = [
                t.id for t in service.tasks(ids) if t.state.value == "running" and t.node in theirs
            ]
            assert lost, "the victim ran nothing when it was killed"
            return Takeover(
                tasks_s=wait_for(
                    lambda: started_since(service, killed, "task_id", lost),
                    timeout=lease + 60,
                    what="its tasks to start again",
                )
                - killed,
                nodes_s=wait_for(
                    lambda: started_since(service, killed, "node", theirs),
                    timeout=lease + 60,
                    what="its nodes to run again",
                )
                - killed,
            )
        finally:
            stop([survivor, victim])


def started_since(service: Service, since: float, column: str, values: list[str]) -> float | None:
    """When the first attempt started after `since` whose `column` (task_id, node) is one of
    `values`."""
    with service.engine.connect() as conn:
        found = conn.execute(
            select(func.min(attempts.c.started)).where(
                attempts.c.started > since, attempts.c[column].in_(values)
            )
        ).scalar()
    return float(found) if found is not None else None


# ---- submit-to-start -----------------------------------------------------------------------


def start_of(service: Service, task_id: str) -> float | None:
    return service.task(task_id).started


@dataclass
class Latency:
    from_call: list[float]  # seconds, submit called -> the master sent the task to a node
    from_commit: list[float]  # submit returned (committed) -> sent
    machine_busy: float = 0.0  # every core, any process, over the measurement (1.0: all busy)


def latency(bench: Bench, samples: int, sqlite: bool) -> Latency:
    """Submit-to-start of single tasks from this process to an idle `dirt serve`."""
    with bench.store(sqlite=sqlite) as (service, env):
        master = bench.master(env)
        try:
            wait_for(
                lambda: shares(service) == [4], timeout=60, what="the master to drive every node"
            )
            wait_for(
                lambda: all(n.online for n in service.nodes()),
                timeout=60,
                what="the nodes to connect",
            )
            found = Latency([], [])
            machine = machine_cpu()
            for i in range(samples + 1):  # the first warms the master up: not counted
                time.sleep(random.uniform(0.2, 0.4))
                called = time.time()
                (task,) = submit(service, f"r{i}", 1, 0.0)
                committed = time.time()
                # The master stamps the start: read it once it is surely there, so that this
                # process's reads do not compete with the master meanwhile.
                time.sleep(0.15)
                started = wait_for(
                    partial(start_of, service, task), timeout=10, what="its start", interval=0.02
                )
                if i:
                    found.from_call.append(started - called)
                    found.from_commit.append(started - committed)
            after = machine_cpu()
            found.machine_busy = (after[0] - machine[0]) / (after[1] - machine[1])
            return found
        finally:
            stop([master])


# ---- the table -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=0.02)
    parser.add_argument("--lease", type=float, default=15.0)
    parser.add_argument("--takeovers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument(
        "--only", choices=("takeover", "throughput", "latency"), help="one part only"
    )
    args = parser.parse_args()
    parts = [args.only] if args.only else ["latency", "takeover", "throughput"]
    server = PostgresServer()
    server.start()
    lines = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bench = Bench(Path(tmp), server, args.slots)
            if "latency" in parts:
                notify = latency(bench, args.samples, sqlite=False)
                poll = latency(bench, args.samples, sqlite=True)
                lines += latency_table(args, notify, poll)
            if "takeover" in parts:
                lease_path = [takeover(bench, args.lease, True) for _ in range(args.takeovers)]
                same_host = [takeover(bench, args.lease, False) for _ in range(args.takeovers)]
                lines += takeover_table(args, lease_path, same_host)
            if "throughput" in parts:
                rates: dict[int, list[Rate]] = {1: [], 2: []}
                for i in range(args.rounds):
                    for masters in (1, 2):
                        rates[masters].append(throughput(bench, masters, args.tasks, args.sleep))
                    print(
                        f"round {i + 1}: one {rates[1][-1].rate:.0f}/s, "
                        f"two {rates[2][-1].rate:.0f}/s",
                        file=sys.stderr,
                    )
                lines += throughput_table(args, rates)
    finally:
        server.stop()
    print("\n".join(lines))


def ms(values: list[float], q: float = 0.5) -> str:
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"


def latency_table(args: argparse.Namespace, notify: Latency, poll: Latency) -> list[str]:
    goal = 0.010
    busy = max(notify.machine_busy, poll.machine_busy)
    lines = [
        f"submit-to-start across processes, one task at a time ({args.samples} samples), ms; "
        f"machine {busy:.0%} busy meanwhile (load average {os.getloadavg()[0]:.1f}):",
        f"{'':<31}{'submit call':>12}{'commit -> start: median':>25}{'p90':>6}"
        f"{'call -> start: median':>23}{'p90':>6}{'worst':>7}",
    ]
    for name, found in (
        ("PostgreSQL, LISTEN/NOTIFY", notify),
        ("SQLite, 50 ms poll (baseline)", poll),
    ):
        call = [a - b for a, b in zip(found.from_call, found.from_commit, strict=True)]
        lines.append(
            f"{name:<31}{ms(call):>12}{ms(found.from_commit):>25}{ms(found.from_commit, 0.9):>6}"
            f"{ms(found.from_call):>23}{ms(found.from_call, 0.9):>6}"
            f"{1000 * max(found.from_call):>7.1f}"
        )
    ratio = statistics.median(poll.from_commit) / statistics.median(notify.from_commit)

    def met(values: list[float]) -> str:
        return "met" if statistics.median(values) <= goal else "NOT met"

    lines.append(
        f"commit -> start {ratio:.1f}x sooner with NOTIFY than with the poll (medians); goal <= "
        f"{goal * 1000:g} ms: commit -> start {met(notify.from_commit)}, "
        f"call -> start {met(notify.from_call)}"
    )
    return lines


def takeover_table(
    args: argparse.Namespace, lease_path: list[Takeover], same_host: list[Takeover]
) -> list[str]:
    goal = args.lease + 5
    worst = max(t.tasks_s for t in lease_path)
    lines = [
        f"takeover, kill -9 of one of two masters ([dispatch] lease = {args.lease:g} s; "
        f"{args.takeovers} kills each), s:",
        f"{'':<34}{'to its tasks running: median':>29}{'worst':>7}{'to its nodes: median':>22}"
        f"{'worst':>7}",
    ]
    for name, found in (
        ("other machine (lease runs out)", lease_path),
        ("same machine (pid seen gone)", same_host),
    ):
        tasks = [t.tasks_s for t in found]
        nodes = [t.nodes_s for t in found]
        lines.append(
            f"{name:<34}{statistics.median(tasks):>29.1f}{max(tasks):>7.1f}"
            f"{statistics.median(nodes):>22.1f}{max(nodes):>7.1f}"
        )
    lines.append(
        f"goal <= lease + 5 = {goal:g} s (worst, other machine): "
        f"{'met' if worst <= goal else 'NOT met'}"
    )
    return lines


def throughput_table(args: argparse.Namespace, rates: dict[int, list[Rate]]) -> list[str]:
    lines = [
        f"throughput, {args.tasks} tasks sleeping {args.sleep * 1000:g} ms, 4 local nodes x "
        f"{args.slots} slots, thread isolation; medians of {args.rounds} rounds",
        f"{'':<27}{'tasks/s':>8}{'CPU ms/task: masters':>22}{'nodes':>7}{'store':>7}{'total':>7}"
        f"{'busiest master':>16}{'machine':>9}",
    ]
    for masters, name in ((1, "one master, 4 nodes"), (2, "two masters, 2 nodes each")):
        runs = rates[masters]

        def med(key: Callable[[Rate], float], runs: list[Rate] = runs) -> float:
            return statistics.median(key(r) for r in runs)

        lines.append(
            f"{name:<27}{med(lambda r: r.rate):>8.0f}{med(lambda r: r.master_ms):>22.3f}"
            f"{med(lambda r: r.node_ms):>7.3f}{med(lambda r: r.store_ms):>7.3f}"
            f"{med(lambda r: r.master_ms + r.node_ms + r.store_ms):>7.3f}"
            f"{med(lambda r: r.master_busy):>15.0%}{med(lambda r: r.machine_busy):>9.0%}"
        )
    ratio = statistics.median(b.rate / a.rate for a, b in zip(rates[1], rates[2], strict=True))
    sleep_bound = 4 * args.slots / args.sleep
    cpu_bound = [
        1000 * (os.cpu_count() or 1) / (r.master_ms + r.node_ms + r.store_ms)
        for m in (1, 2)
        for r in rates[m]
    ]
    lines += [
        "busiest master: its own CPU over the run (100% = one core: the most one process can "
        "use); machine: every core, every process (others' too)",
        f"two over one: {ratio:.2f}x (goal >= 1.6x: {'met' if ratio >= 1.6 else 'NOT met'})",
        f"bounds: the slots allow {sleep_bound:.0f} tasks/s (4 x {args.slots} slots / "
        f"{args.sleep * 1000:g} ms); this machine's {os.cpu_count()} cores allow about "
        f"{statistics.median(cpu_bound):.0f} tasks/s at the CPU per task measured",
    ]
    return lines


if __name__ == "__main__":
    main()
