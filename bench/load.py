"""The web server under load while the dispatcher works: wrk and live pages vs `dirt serve`.

    .venv/bin/python bench/load.py [--connections 50] [--sse 50] [--tasks 8000] [--rounds 3]

Runs the real `dirt serve` (web and dispatcher, as users run it) on a project with a local
node (process isolation, 2 slots on a 2-core machine) and 300 records, over TCP on 127.0.0.1.
Each round measures, side by side:

- web alone: `wrk` with N connections on `/api/records`, M event streams open, nothing
  dispatching;
- together: the same wrk run while `--tasks` trivial tasks dispatch, the M event streams open
  (and told of every change);
- dispatch alone: the same number of trivial tasks, no reader at all.

The dispatch rate is counted over the seconds wrk ran, and "alone" over the same seconds after
submission, so both see the same queue. A stream the server closes, or that fails, counts as
dropped. Figures are medians over the rounds; the ratios are of the medians. Each round also
prints the CPU cores the dispatcher, the web processes and the node's processes used in each
part (from /proc): on a shared machine that says where the time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

DIRT = str(Path(sys.executable).with_name("dirt"))
TRIVIAL_MODULE = "def execute():\n    return {'success': True}\n"
WEB_GOAL, DISPATCH_GOAL = 0.6, 0.7  # of the web's idle rate and of the rate without readers
RECORDS = 300  # so /api/records answers a full page of 50 with their counts
URL_LINE = re.compile(r"(https?://[^\s/]+/)")


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cores: float  # wrk's own CPU use


def _task_ms(cpu: dict[str, float], rate: float) -> float:
    return (cpu["dispatcher"] + cpu["node"]) / rate * 1e3


@dataclass
class Round:
    idle: WrkResult
    busy: WrkResult
    rate_alone: float
    rate_busy: float
    # Cores used by each role in the three phases (see `cpu_by_role`).
    cpu_idle: dict[str, float]
    cpu_busy: dict[str, float]
    cpu_alone: dict[str, float]

    def costs(self) -> str:
        """CPU per unit of work, alone and together: what the two ratios are made of."""
        return (
            f"web {self.cpu_idle['web'] / self.idle.rps * 1e6:.0f} -> "
            f"{self.cpu_busy['web'] / self.busy.rps * 1e6:.0f} us of CPU a request; "
            f"dispatcher and node {_task_ms(self.cpu_alone, self.rate_alone):.2f} -> "
            f"{_task_ms(self.cpu_busy, self.rate_busy):.2f} ms a task; "
            f"wrk {self.idle.cores:.2f} -> {self.busy.cores:.2f} cores; "
            f"the goals need {self.cores_needed():.2f} of {os.cpu_count()} cores"
        )

    def cores_needed(self) -> float:
        """Cores both goals take together at the costs measured alone: the web's and wrk's
        share of the idle run, the dispatcher's and node's of the run without readers, and
        this benchmark's readers."""
        web = WEB_GOAL * (self.cpu_idle["web"] + self.idle.cores)
        dispatch = DISPATCH_GOAL * (self.cpu_alone["dispatcher"] + self.cpu_alone["node"])
        return web + dispatch + self.cpu_busy["benchmark"]


@dataclass
class Streams:
    """M open `/events` streams, held by an asyncio loop on a thread of this process."""

    host: str
    port: int
    count: int
    opened: int = 0
    dropped: int = 0
    events: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the streams (again): counts add up over every time they were open."""
        self._stop = threading.Event()
        target = self.opened + self.count
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.opened < target and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.opened < target:
            raise RuntimeError(f"only {self.opened} of {target} event streams opened")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._one()) for _ in range(self.count)]
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self) -> None:
        # An event may be one long line (500 changes): far over asyncio's 64 KiB line limit.
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 24)
        writer.write(
            f"GET /events HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            self.dropped += 1
            return
        self.opened += 1
        try:
            while True:
                line = await reader.readline()
                if not line:  # the server closed the stream
                    break
                if line.startswith(b"event: change"):
                    self.events += 1
        except (OSError, ValueError):
            pass
        finally:
            writer.close()
        if not self._stop.is_set():
            self.dropped += 1


def run(*args: str, cwd: Path) -> str:
    result = subprocess.run([DIRT, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"dirt {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def make_project(root: Path) -> Path:
    run("create", "load", cwd=root)
    project = root / "load"
    (project / "tasks" / "trivial.py").write_text(TRIVIAL_MODULE)
    run("nodes", "add", "local", cwd=project)
    return project


def seed(engine_url: str, project: Path) -> None:
    """RECORDS records of 4 finished tasks each (through `dirt submit`, then marked done)."""
    import json

    docs: list[dict] = []
    for r in range(RECORDS):
        docs.append({"_id": f"r{r:04d}", "type": "record", "description": f"revision {r}"})
        docs += [{"type": "task", "record_id": f"r{r:04d}", "name": "trivial"} for _ in range(4)]
    path = project / "seed.json"
    path.write_text(json.dumps(docs))
    run("submit", str(path), cwd=project)


def start_server(project: Path, extra: list[str]) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    proc = subprocess.Popen(
        [DIRT, "serve", "--port", "0", *extra],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # as a user starts it: from a terminal or a service manager
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = URL_LINE.search(line)
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain
            return proc, found.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("dirt serve printed no URL")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, connections: int, seconds: float) -> WrkResult:
    used = cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        # A session of its own, as when started from another terminal: Linux's autogroup
        # scheduler shares the CPU between sessions first, and a client is not the server's.
        start_new_session=True,
    ).stdout
    cores = (cpu_seconds(resource.RUSAGE_CHILDREN) - used) / (time.monotonic() - start)
    quantiles = {
        q: _ms(v, u) for q, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    requests = re.search(r"(\d+) requests in", out)
    return WrkResult(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=quantiles.get("50", float("nan")),
        p99_ms=quantiles.get("99", float("nan")),
        errors=errors,
        requests=int(requests.group(1)) if requests else 0,
        cores=cores,
    )


class Counter:
    """Samples how many tasks have succeeded, every 0.2 s, from the store (one indexed read)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def done(self) -> int:
        with self.engine.connect() as conn:
            found = conn.execute(
                text("SELECT n FROM state_counts WHERE state = 'succeeded'")
            ).scalar_one_or_none()
        return int(found or 0)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append((time.monotonic(), self.done()))

    def __enter__(self) -> Counter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def rate(self, start: float, end: float) -> float:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0)


def submit(project: Path, record: str, tasks: int) -> None:
    import json

    docs = [{"_id": record, "type": "record"}] + [
        {"type": "task", "record_id": record, "name": "trivial"} for _ in range(tasks)
    ]
    path = project / f"{record}.json"
    path.write_text(json.dumps(docs))
    run("submit", str(path), cwd=project)


def wait_idle(counter: Counter, total: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while counter.done() < total:
        if time.monotonic() > deadline:
            raise RuntimeError("the tasks did not finish")
        time.sleep(0.1)


def _ticks(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, CPU ticks used by the process and its reaped children, command line)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), sum(int(f) for f in fields[11:15]), cmdline


def cpu_by_role(server: int) -> dict[str, float]:
    """CPU seconds so far of `dirt serve` (the dispatcher), its web processes and the node's
    processes (agent, fork server and the tasks it forked), from /proc."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := _ticks(int(entry.name))) is not None:
            procs[int(entry.name)] = found
    roles = {"dispatcher": 0.0, "web": 0.0, "node": 0.0}
    hz = os.sysconf("SC_CLK_TCK")
    for pid, (_, ticks, cmdline) in procs.items():
        ancestor, chain = pid, 0
        while ancestor in procs and ancestor != server and chain < 20:
            ancestor, chain = procs[ancestor][0], chain + 1
        if ancestor != server:
            continue
        role = "dispatcher" if pid == server else "web" if "dirt.web.child" in cmdline else "node"
        roles[role] += ticks / hz
    return roles


def cpu_between(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    return {k: (after[k] - before[k]) / seconds for k in before}


def cpu_seconds(who: int) -> float:
    """CPU seconds used so far by this process (RUSAGE_SELF) or its reaped children."""
    used = resource.getrusage(who)
    return used.ru_utime + used.ru_stime


def cores(cpu: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def one_round(
    index: int,
    project: Path,
    url: str,
    server: int,
    counter: Counter,
    args: argparse.Namespace,
    done: int,
    streams: Streams,
) -> tuple[Round, int]:
    records = url + "api/records"
    # Web alone, with the event streams open (nothing changes, so they cost nothing).
    streams.start()
    cpu = cpu_by_role(server)
    idle = wrk(records, args.connections, args.seconds)
    cpu_idle = cpu_between(cpu, cpu_by_role(server), args.seconds)
    # Together: wrk while the tasks dispatch, the event streams open and told of every change.
    submit(project, f"busy{index}", args.tasks)
    submitted = time.monotonic()
    time.sleep(max(0.0, submitted + args.delay - time.monotonic()))
    cpu = cpu_by_role(server)
    mine = cpu_seconds(resource.RUSAGE_SELF)
    start = time.monotonic()
    busy = wrk(records, args.connections, args.seconds)
    end = time.monotonic()
    cpu_busy = cpu_between(cpu, cpu_by_role(server), end - start)
    # This process's stream readers and task counter use the same two cores.
    cpu_busy["benchmark"] = (cpu_seconds(resource.RUSAGE_SELF) - mine) / (end - start)
    rate_busy = counter.rate(start, end)
    done += args.tasks
    wait_idle(counter, done)
    streams.stop()
    # Dispatch alone: the same tasks, the same window after submission, no reader at all.
    submit(project, f"alone{index}", args.tasks)
    submitted = time.monotonic()
    time.sleep(args.delay)
    cpu = cpu_by_role(server)
    time.sleep(args.seconds + 0.3)
    cpu_alone = cpu_between(cpu, cpu_by_role(server), args.seconds + 0.3)
    rate_alone = counter.rate(submitted + args.delay, submitted + args.delay + args.seconds)
    done += args.tasks
    wait_idle(counter, done)
    print(
        f"round {index + 1}: CPU cores used: web alone [{cores(cpu_idle)}]; "
        f"together [{cores(cpu_busy)}]; dispatch alone [{cores(cpu_alone)}]",
        file=sys.stderr,
    )
    return Round(idle, busy, rate_alone, rate_busy, cpu_idle, cpu_busy, cpu_alone), done


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(rounds: list[Round], streams: Streams, args: argparse.Namespace) -> None:
    idle_rps = median([r.idle.rps for r in rounds])
    busy_rps = median([r.busy.rps for r in rounds])
    alone = median([r.rate_alone for r in rounds])
    busy_rate = median([r.rate_busy for r in rounds])
    print(
        f"{args.connections} wrk connections on /api/records, {args.sse} SSE streams open, "
        f"{args.tasks} trivial tasks per dispatch, {args.seconds:.0f} s windows, "
        f"{len(rounds)} round(s); medians"
    )
    print(
        f"{'':<24}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'tasks/s':>9}"
        f"{'web x':>7}{'dispatch x':>11}"
    )
    print(
        f"{'web alone':<24}{idle_rps:>8.0f}{median([r.idle.p50_ms for r in rounds]):>9.1f}"
        f"{median([r.idle.p99_ms for r in rounds]):>9.1f}"
        f"{sum(r.idle.errors for r in rounds):>8}{'-':>9}{1:>6.2f}x{'-':>11}"
    )
    print(f"{'dispatch alone':<24}{'-':>8}{'-':>9}{'-':>9}{'-':>8}{alone:>9.0f}{'-':>7}{1:>10.2f}x")
    print(
        f"{'web + dispatch':<24}{busy_rps:>8.0f}{median([r.busy.p50_ms for r in rounds]):>9.1f}"
        f"{median([r.busy.p99_ms for r in rounds]):>9.1f}"
        f"{sum(r.busy.errors for r in rounds):>8}{busy_rate:>9.0f}"
        f"{busy_rps / idle_rps:>6.2f}x{busy_rate / alone:>10.2f}x"
    )
    print(
        f"SSE streams: {streams.opened} opened, {streams.dropped} dropped, "
        f"{streams.events} change events received"
    )
    for i, r in enumerate(rounds):
        print(
            f"  round {i + 1}: idle {r.idle.rps:.0f} req/s p99 {r.idle.p99_ms:.0f} ms; "
            f"busy {r.busy.rps:.0f} req/s p99 {r.busy.p99_ms:.0f} ms errors {r.busy.errors}; "
            f"dispatch {r.rate_alone:.0f} -> {r.rate_busy:.0f} tasks/s\n    {r.costs()}"
        )
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}); load average at the start "
        f"{args.load_before}, at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"goals: no errors, busy p99 < 250 ms, web >= {WEB_GOAL}x of idle, "
        f"dispatch >= {DISPATCH_GOAL}x of alone, "
        "no stream dropped"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--sse", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=8000)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of a wrk run")
    parser.add_argument("--delay", type=float, default=1.5, help="submit to wrk start")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-arg", action="append", default=[], help="passed to dirt serve")
    args = parser.parse_args()
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk (scripts/install-system-deps.sh does)")
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp))
        db_url = f"sqlite:///{project / 'load.sqlite'}"
        seed(db_url, project)
        proc, url = start_server(project, args.serve_arg)
        host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
        streams = Streams(host, int(port), args.sse)
        try:
            with Counter(db_url) as counter:
                done = RECORDS * 4
                wait_idle(counter, done)
                wrk(url + "api/records", args.connections, 2)  # warm up
                rounds = []
                for i in range(args.rounds):
                    found, done = one_round(i, project, url, proc.pid, counter, args, done, streams)
                    rounds.append(found)
        finally:
            streams.stop()
            with contextlib.suppress(Exception):
                stop_server(proc)
        report(rounds, streams, args)


if __name__ == "__main__":
    main()
