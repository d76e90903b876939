"""Dispatch throughput: dirt driven from its CLI next to the two raw execnet limits, in one run.

    .venv/bin/python bench/dispatch.py [--tasks 2000] [--slots 2] [--rounds 3]

Each round measures, one after the other, the same number of trivial calls or tasks four ways:

- raw execnet: `remote_exec` + `receive` of a one-line call over 2 persistent popen gateways,
  one caller thread each: the limit for thread isolation (a task run inside the node's process).
- raw execnet forking per call: over the same 2 gateways, one persistent channel each runs a
  loop that, per request, forks a child that computes the result and writes it to a pipe; the
  loop reads it, reaps the child and sends the result back. This is the least any runner that
  isolates each task in its own process must do per task, on a connection it keeps open: one
  request, one fork, one result back through a pipe, one reap. A `remote_exec` per call would
  add execnet's channel setup and a compile, which no process-isolating runner needs, and
  forking from the gateway process (not a separate server) leaves out a relay hop dirt pays
  for, so this is a limit dirt can approach but not pass.
- dirt, thread and process isolation, driven the way a user does: `dirt create`, a trivial
  task module, `dirt nodes add local --slots N` (set-up, not timed), then, timed, `dirt submit
  FILE.json` (N tasks) and `dirt serve --no-web`, each a subprocess, until the store holds
  every result (read every 50 ms from this process).

The dirt rate the ratios use is N / (first task started -> last result completed, both as the
store has them, so the reads of the store need not be frequent): the loop
running flat out, as the limits are measured with warm gateways. The fixed costs in front of
it are printed apart: `dirt submit` (its whole process) and serve's start (interpreter,
imports, store, node connection, fork server) up to the first task started, and "whole run"
is N over all of it. CPU is read from /proc: the `dirt serve` process (the master) and its
descendants (the local node: gateway, fork server, task processes), per task, over the flat
out part; it is the noise-robust measure on a shared machine. Figures are medians over the
rounds; a ratio is the median of each round's ratio (the four runs of a round share the
machine's weather).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import execnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dirt.config import load_settings
from dirt.service import Service

DIRT = str(Path(sys.executable).with_name("dirt"))
TRIVIAL_MODULE = "def execute():\n    return {'success': True}\n"
TRIVIAL_CALL = "channel.send({'success': True})"
FORK_PER_CALL = """\
import marshal, os
while channel.receive() is not None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, marshal.dumps({'success': True}))
        os._exit(0)
    os.close(w)
    data = b''
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    channel.send(marshal.loads(data))
"""
GOALS = {"thread": 0.5, "process": 0.6}  # dirt's rate over its limit's
LIMIT_OF = {"thread": "raw", "process": "fork"}
TICK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.05  # how often the store is read for the end of a dirt run


@dataclass
class Run:
    rate: float
    whole: float = 0.0  # tasks/s over submit + serve start + running
    submit_s: float = 0.0
    startup_s: float = 0.0
    master_ms: float = 0.0  # CPU ms per task, flat out
    node_ms: float = 0.0


# ---- the limits ----------------------------------------------------------------------------


def _over_gateways(n: int, prepare: Callable[[execnet.Gateway], Callable[[], object]]) -> Run:
    """`prepare(gw)()` called n times over 2 popen gateways, one caller thread each."""
    group = execnet.Group()
    try:
        calls = [prepare(group.makegateway(f"popen//python={sys.executable}")) for _ in range(2)]
        for call in calls:  # warm: the first call pays for imports
            call()
        per = n // len(calls)

        def caller(call: Callable[[], object]) -> None:
            for _ in range(per):
                call()

        threads = [threading.Thread(target=caller, args=(c,)) for c in calls]
        cpu = time.process_time(), cpu_seconds(os.getpid())[1]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        done = per * len(calls)
        return Run(
            rate=done / elapsed,
            master_ms=1000 * (time.process_time() - cpu[0]) / done,
            node_ms=1000 * (cpu_seconds(os.getpid())[1] - cpu[1]) / done,
        )
    finally:
        group.terminate(timeout=5)


def raw_execnet(n: int) -> Run:
    return _over_gateways(n, lambda gw: lambda: gw.remote_exec(TRIVIAL_CALL).receive())


def raw_execnet_fork(n: int) -> Run:
    def prepare(gw: execnet.Gateway) -> Callable[[], object]:
        channel = gw.remote_exec(FORK_PER_CALL)

        def call() -> object:
            channel.send(1)
            return channel.receive()

        return call

    return _over_gateways(n, prepare)


# ---- dirt from its CLI ---------------------------------------------------------------------


def process_table() -> tuple[dict[int, list[int]], dict[int, list[str]]]:
    """Every process's children, and its /proc/PID/stat fields after the command's name."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children, stats


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of `pid` itself, and of its descendants (with their reaped children)."""
    children, stats = process_table()

    def used(p: int, with_reaped: bool) -> float:
        f = stats.get(p)
        if f is None:
            return 0.0
        ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if with_reaped else 0)
        return ticks / TICK

    own = used(pid, with_reaped=False)
    below, todo = 0.0, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        below += used(p, with_reaped=True)
        todo.extend(children.get(p, []))
    return own, below


def dirt(cmd: list[str], project: Path, isolation: str, **kw: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DIRT_DISPATCH_ISOLATION": isolation}
    return subprocess.Popen([DIRT, "--project", str(project), *cmd], env=env, **kw)


def make_project(root: Path, isolation: str, n: int, slots: int) -> Path:
    project = root / f"bench-{isolation}"
    subprocess.run([DIRT, "create", str(project)], check=True, capture_output=True)
    (project / "tasks" / "trivial.py").write_text(TRIVIAL_MODULE)
    add = dirt(
        ["nodes", "add", "local", "--slots", str(slots)],
        project,
        isolation,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert add.wait() == 0, "dirt nodes add local failed"
    docs = [{"_id": "bench", "type": "record"}] + [
        {"type": "task", "record_id": "bench", "name": "trivial"} for _ in range(n)
    ]
    (project / "tasks.json").write_text(json.dumps(docs))
    return project


def until_done(
    service: Service, n: int, what: str, cpu: Callable[[], tuple[float, float]]
) -> tuple[int, float, float]:
    """Wait until the n tasks of record `bench` are finished (read every POLL_S); returns how
    many were finished when the first was seen, and `cpu()` then (the flat-out part starts).
    The times the rate uses are the store's own (first started, last completed): the reads
    here need not be frequent, and their CPU (0.7 ms each) is not taken from the two cores
    dirt shares with them, as no reader shares them with the limits."""
    first: tuple[int, float, float] | None = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        counts = service.record_summary("bench").counts
        finished = n - counts["waiting"] - counts["running"]
        if first is None and finished:
            first = (finished, *cpu())
        if finished == n:
            assert first is not None
            return first
        time.sleep(POLL_S)
    raise RuntimeError(f"{what} did not finish in time")


def dirt_cli(root: Path, isolation: str, n: int, slots: int) -> Run:
    project = make_project(root, isolation, n, slots)
    service = Service(load_settings(project, environ={}))
    try:
        start = time.time()
        submit = dirt(
            ["submit", "tasks.json"], project, isolation, cwd=project, stdout=subprocess.DEVNULL
        )
        assert submit.wait() == 0, "dirt submit failed"
        submitted = time.time()
        serve = dirt(
            ["serve", "--no-web"],
            project,
            isolation,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            first = until_done(service, n, f"dirt ({isolation})", lambda: cpu_seconds(serve.pid))
            master, node = cpu_seconds(serve.pid)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)
        tasks = service.record_detail("bench").tasks
    finally:
        service.close()
    assert all(t.state.value == "succeeded" for t in tasks), "a benchmark task failed"
    first_start = min(t.started for t in tasks if t.started is not None)
    done = max(t.completed for t in tasks if t.completed is not None)
    counted = n - first[0]
    return Run(
        rate=n / (done - first_start),
        whole=n / (done - start),
        submit_s=submitted - start,
        startup_s=first_start - submitted,
        master_ms=1000 * (master - first[1]) / counted,
        node_ms=1000 * (node - first[2]) / counted,
    )


# ---- the table -----------------------------------------------------------------------------


def median(runs: list[Run], key: Callable[[Run], float]) -> float:
    return statistics.median(key(r) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.tasks
    runs: dict[str, list[Run]] = {"raw": [], "fork": [], "thread": [], "process": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            runs["raw"].append(raw_execnet(n))
            runs["fork"].append(raw_execnet_fork(n))
            for isolation in ("thread", "process"):
                runs[isolation].append(dirt_cli(Path(tmp) / str(i), isolation, n, args.slots))
            print(
                f"round {i + 1}: " + ", ".join(f"{k} {v[-1].rate:.0f}/s" for k, v in runs.items()),
                file=sys.stderr,
            )
    print(table(runs, n, args.slots, args.rounds))


def ratio(runs: dict[str, list[Run]], iso: str, key: Callable[[Run, Run], float]) -> float:
    """The median over the rounds of key(dirt's run, its limit's run in the same round)."""
    pairs = zip(runs[iso], runs[LIMIT_OF[iso]], strict=True)
    return statistics.median(key(d, lim) for d, lim in pairs)


def table(runs: dict[str, list[Run]], n: int, slots: int, rounds: int) -> str:
    lines = [
        f"{n} trivial tasks, local node with {slots} slots, 2 raw gateways; "
        f"medians of {rounds} rounds",
        f"{'':<36}{'tasks/s':>8}{'vs limit':>10}{'goal':>6}"
        f"{'CPU ms/task: master':>21}{'node':>7}{'total':>7}{'vs limit':>10}",
    ]
    names = {
        "raw": "raw execnet (thread limit)",
        "fork": "raw execnet, fork per call (limit)",
        "thread": "dirt, thread isolation",
        "process": "dirt, process isolation",
    }
    for key, name in names.items():
        rate = median(runs[key], lambda r: r.rate)
        master = median(runs[key], lambda r: r.master_ms)
        node = median(runs[key], lambda r: r.node_ms)
        total = median(runs[key], lambda r: r.master_ms + r.node_ms)
        if key in GOALS:
            by_rate = ratio(runs, key, lambda d, lim: d.rate / lim.rate)
            by_cpu = ratio(
                runs, key, lambda d, lim: (lim.master_ms + lim.node_ms) / (d.master_ms + d.node_ms)
            )
            met = "met" if by_rate >= GOALS[key] else "NOT met"
            middle = f"{by_rate:>9.2f}x{GOALS[key]:>5.1f}x"
            tail = f"{by_cpu:>9.2f}x  goal {met}"
        else:
            middle, tail = " " * 16, ""
        lines.append(
            f"{name:<36}{rate:>8.0f}{middle}{master:>21.3f}{node:>7.3f}{total:>7.3f}{tail}"
        )
    lines += [
        "vs limit: dirt's rate over its limit's (thread: raw execnet; process: fork per call);",
        "CPU vs limit: the limit's CPU per task over dirt's, what the rate ratio would be on a",
        "machine with nothing else running (master = `dirt serve` or the calling process; node =",
        "the node's processes). dirt from the CLI, fixed costs (s) and rate over all of them:",
    ]
    for iso in ("thread", "process"):
        lines.append(
            f"  {iso:<8} `dirt submit` {median(runs[iso], lambda r: r.submit_s):.2f}"
            f"  `dirt serve` to first start {median(runs[iso], lambda r: r.startup_s):.2f}"
            f"  whole run {median(runs[iso], lambda r: r.whole):.0f} tasks/s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
