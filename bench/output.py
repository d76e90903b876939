"""Big outputs: a big attachment and a big output through dirt next to their baselines, in one run.

    .venv/bin/python bench/output.py [--size 1GiB] [--rounds 3]

dirt runs as a user runs it: `dirt create`, `dirt nodes add local --slots 4`, `dirt serve` (the
dispatcher and the web server, a subprocess: the master), every task given with `dirt submit`.
Each round measures, one after the other:

- raw execnet copy: over a warm popen gateway, a remote loop reads the file in 1 MiB chunks and
  `channel.send`s each; this process writes each to a file as execnet's receiver thread hands it
  over (a channel callback). The least any copy over execnet does.
- dirt, attachment by path: a task returns ``{"filename", "path"}`` for the same file; its time
  is the task's, started to completed as stored (fork, run, upload through the agent's fair
  queue, sha256 and fsync into the blob store, the store's write): the file's size over it.
- a task `print`ing SIZE in lines of 100 bytes (a log's) and of 1 KiB, three ways: into
  /dev/null (the goal's baseline); into a pipe (1 MiB, as dirt's) read by `cat > /dev/null`,
  the least any capture through a pipe costs; and captured by dirt, its stdout and stderr going
  through the agent to the master ([dispatch] output_limit, 16 MiB by default, keeps the head
  and the tail). Each time is the task's, started to completed. A reader follows the captured
  output over HTTP (`GET /api/tasks/{id}/output?offset=N`), as `dirt logs -f` or the record
  page would: when its first bytes came is printed.
- both big tasks at once, and once the upload and the printing are under way, 20 trivial tasks
  (one `dirt submit`): the seconds from their submission to all 20 stored as finished, and
  whether the big tasks were still running then.

CPU seconds are read from /proc for the printing runs: the task's process with its children
(from the fork server, which reaps it), the agent and the master. The task's own CPU ratio
(printing over /dev/null) is what the run time ratio would be with a core free for the agent,
the three's together what it would be on one core; on a shared machine the measured ratio
falls in between.

Throughout, a thread samples the resident memory (VmRSS, every 20 ms, from /proc) of the master
(`dirt serve`), the node agent (the gateway process `dirt serve` started) and its fork server;
the peak printed is the larger of the samples and the kernel's own high-water mark (VmHWM).
Figures are medians over the rounds; a ratio is the median of each round's ratio.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import execnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatch import TICK, process_table  # bench/dispatch.py, next to this file

from dirt.config import load_settings, parse_size
from dirt.models import Task
from dirt.service import Service

DIRT = str(Path(sys.executable).with_name("dirt"))
MiB = 1 << 20
SLOTS = 4
QUICK_TASKS = 20
LINES = (100, 1024)  # bytes per printed line, newline included: a log's, and long ones
GOALS = {"attach": 0.5, "print": 1.5, "rss_mib": 256, "quick_s": 10.0}

ATTACH = """\
def execute(path):
    return {"success": True, "attachments": [{"filename": "big.bin", "path": path}]}
"""
PRINTS = """\
import fcntl, os, subprocess, sys

def execute(size, line, into=None):
    null = os.open(os.devnull, os.O_WRONLY)
    if into == "devnull":
        os.dup2(null, 1)
    elif into == "cat":  # the least a capture through a pipe costs: a reader doing nothing else
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        fcntl.fcntl(cat.stdin.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ, as dirt's pipe
        os.dup2(cat.stdin.fileno(), 1)
    text = "x" * (line - 1)
    for _ in range(size // line):
        print(text)
    sys.stdout.flush()
    if into == "cat":
        os.dup2(null, 1)
        cat.stdin.close()
        cat.wait()
    return {"success": True}
"""
TRIVIAL = "def execute():\n    return {'success': True}\n"
REMOTE_COPY = """\
path, chunk = channel.receive()
with open(path, "rb") as fh:
    while True:
        data = fh.read(chunk)
        if not data:
            break
        channel.send(data)
channel.send(None)
"""


@dataclass
class Round:
    raw_s: float = 0.0
    attach_s: float = 0.0
    devnull_s: dict[int, float] = field(default_factory=dict)  # by line length
    cat_s: dict[int, float] = field(default_factory=dict)
    print_s: dict[int, float] = field(default_factory=dict)
    # CPU seconds of each printing run ("devnull/100", "cat/100", "print/100", ...) by role:
    # the task's process and its children ("task", reaped by the fork server), the agent, the
    # master
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    first_output_s: float = 0.0  # printing task: start -> first bytes read over HTTP
    output_read: int = 0  # bytes the HTTP reader got
    quick_s: float = 0.0  # 20 trivial tasks: stored by `dirt submit` -> all finished
    quick_with_submit_s: float = 0.0  # the same from `dirt submit` started
    still_running: tuple[bool, bool] = (False, False)  # the attaching, the printing task


@dataclass
class Peaks:
    """Peak resident memory in KiB per role, as sampled (and the kernel's VmHWM)."""

    kib: dict[str, int] = field(default_factory=lambda: {"master": 0, "agent": 0, "fork": 0})


# ---- processes and memory ------------------------------------------------------------------


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of `pid` itself, and of the children it reaped."""
    fields = process_table()[1].get(pid)
    if fields is None:
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK


def cpu_by_role(roles: dict[str, int]) -> dict[str, float]:
    """Master and agent: their own CPU; task: what the fork server's reaped children used."""
    return {
        "master": cpu_seconds(roles["master"])[0],
        "agent": cpu_seconds(roles["agent"])[0],
        "task": cpu_seconds(roles["fork"])[1],
    }


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in before}


def node_processes(master: int) -> dict[str, int]:
    """The agent (the gateway process the master started) and its fork server."""
    roles: dict[str, int] = {}
    children = process_table()[0]
    for child in children.get(master, []):
        for grandchild in children.get(child, []):
            if "dirt fork server" in cmdline(grandchild):
                roles["agent"], roles["fork"] = child, grandchild
    return roles


class Sampler(threading.Thread):
    """Samples VmRSS of the master, the agent and the fork server every 20 ms."""

    def __init__(self, master: int) -> None:
        super().__init__(daemon=True)
        self.master = master
        self.peaks = Peaks()
        self.roles = {"master": master}
        self.stop = threading.Event()

    def run(self) -> None:
        found_at = 0.0
        while not self.stop.wait(0.02):
            now = time.monotonic()
            if len(self.roles) < 3 and now - found_at > 0.5:
                self.roles.update(node_processes(self.master))
                found_at = now
            for role, pid in self.roles.items():
                self.peaks.kib[role] = max(self.peaks.kib[role], status_kib(pid, "VmRSS"))

    def finish(self) -> Peaks:
        """Stop sampling; the peaks, raised to the kernel's high-water marks."""
        self.stop.set()
        self.join()
        for role, pid in self.roles.items():
            self.peaks.kib[role] = max(self.peaks.kib[role], status_kib(pid, "VmHWM"))
        return self.peaks


# ---- the baseline --------------------------------------------------------------------------


def raw_copy(source: Path, target: Path) -> float:
    """Seconds to copy `source` through a warm execnet channel in 1 MiB chunks into `target`
    (each chunk written by execnet's receiver thread as it comes, as dirt's master does)."""
    group = execnet.Group()
    try:
        gw = group.makegateway(f"popen//python={sys.executable}")
        gw.remote_exec("channel.send(1)").receive()  # warm
        done = threading.Event()
        with target.open("wb") as fh:

            def write(data: bytes | None) -> None:
                if data is None:
                    done.set()
                else:
                    fh.write(data)

            start = time.perf_counter()
            channel = gw.remote_exec(REMOTE_COPY)
            channel.setcallback(write)
            channel.send((str(source), MiB))
            if not done.wait(600):
                raise RuntimeError("the raw copy did not finish within 600 s")
        elapsed = time.perf_counter() - start
        channel.waitclose(30)
    finally:
        group.terminate(timeout=5)
    target.unlink()
    return elapsed


# ---- dirt ----------------------------------------------------------------------------------


def run(args: list[str], project: Path) -> None:
    subprocess.run([DIRT, "--project", str(project), *args], check=True, capture_output=True)


def make_project(root: Path) -> Path:
    project = root / "bench-output"
    subprocess.run([DIRT, "create", str(project)], check=True, capture_output=True)
    for name, source in (("attach", ATTACH), ("prints", PRINTS), ("trivial", TRIVIAL)):
        (project / "tasks" / f"{name}.py").write_text(source)
    run(["nodes", "add", "local", "--slots", str(SLOTS)], project)
    return project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Dirt:
    """A project with `dirt serve` running, and the service to read its store."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.port = free_port()
        self.serve = subprocess.Popen(
            [DIRT, "--project", str(project), "serve", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.service = Service(load_settings(project, environ={}))
        self.records = 0

    def submit(self, names: list[str], kwargs: dict[str, Any] | None = None) -> list[str]:
        """Submit tasks with `dirt submit` (as a new record); their ids."""
        self.records += 1
        record = f"r{self.records}"
        args = ["submit", record]
        for name in names:
            args += ["-t", name]
        if kwargs:
            import json

            args += ["--kwargs", json.dumps(kwargs)]
        run(args, self.project)
        return [t.id for t in self.service.record_detail(record).tasks]

    def task(self, task_id: str) -> Task:
        return self.service.task(task_id)

    def wait(self, task_ids: list[str], timeout: float = 600) -> list[Task]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = [self.task(t) for t in task_ids]
            if all(t.state.finished for t in tasks):
                failed = [f"{t.name}: {t.reason}" for t in tasks if t.state.value != "succeeded"]
                if failed:
                    raise RuntimeError("a benchmark task failed: " + "; ".join(failed))
                return tasks
            time.sleep(0.01)
        raise RuntimeError(f"tasks {task_ids} did not finish within {timeout} s")

    def timed(self, name: str, kwargs: dict[str, Any]) -> float:
        """Run one task; its seconds from started to completed, as stored."""
        (task,) = self.wait(self.submit([name], kwargs))
        assert task.started is not None and task.completed is not None
        return task.completed - task.started

    def stop(self) -> None:
        self.service.close()
        self.serve.send_signal(signal.SIGTERM)
        try:
            self.serve.wait(60)
        except subprocess.TimeoutExpired:
            self.serve.kill()
            self.serve.wait()


def follow_output(port: int, task_id: str, box: dict[str, float]) -> None:
    """Read a task's output over HTTP from where the last read ended, until no more comes."""
    offset = 0
    url = f"http://127.0.0.1:{port}/api/tasks/{task_id}/output?offset="
    while True:
        with urllib.request.urlopen(url + str(offset), timeout=30) as response:
            data = response.read()
            more = response.headers["X-More-Data"] == "true"
            offset = int(response.headers["X-Next-Offset"])
        if data and "first" not in box:
            box["first"] = time.time()
        box["read"] = box.get("read", 0) + len(data)
        if not more:
            return
        time.sleep(0.2)


def printing(dirt: Dirt, size: int, line: int) -> tuple[float, float, int]:
    """The printing task's seconds, when its first output was read (seconds after it
    started), and the bytes read."""
    (task_id,) = dirt.submit(["prints"], {"size": size, "line": line})
    box: dict[str, float] = {}
    reader = threading.Thread(target=follow_output, args=(dirt.port, task_id, box))
    reader.start()
    (task,) = dirt.wait([task_id])
    reader.join(60)
    assert task.started is not None and task.completed is not None
    return task.completed - task.started, box.get("first", 0.0) - task.started, int(box["read"])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.01)


def quick_during_big(dirt: Dirt, source: Path, size: int) -> tuple[float, float, tuple[bool, bool]]:
    """Both big tasks at once, then 20 trivial tasks: (seconds from their being stored by
    `dirt submit` to all finished, the same from `dirt submit` starting, whether each big task
    was still running then)."""
    (attach,) = dirt.submit(["attach"], {"path": str(source)})
    (prints,) = dirt.submit(["prints"], {"size": size, "line": LINES[0]})
    # The attaching task returns at once: while it is running, its file is being uploaded.
    wait_until(lambda: dirt.task(attach).state.value != "waiting", "the upload")
    wait_until(lambda: bool(dirt.service.task_output(prints, 0, 1).data), "the printing")
    started = time.time()
    quick = dirt.submit(["trivial"] * QUICK_TASKS)
    tasks = dirt.wait(quick)
    submitted = min(t.created for t in tasks)  # stored by `dirt submit`
    done = max(t.completed or 0.0 for t in tasks)
    big = [dirt.task(attach), dirt.task(prints)]
    still = ((big[0].completed or done + 1) > done, (big[1].completed or done + 1) > done)
    dirt.wait([attach, prints])
    return done - submitted, done - started, still


def one_round(dirt: Dirt, source: Path, size: int, scratch: Path, roles: dict[str, int]) -> Round:
    r = Round()
    r.raw_s = raw_copy(source, scratch / "raw-copy.bin")
    r.attach_s = dirt.timed("attach", {"path": str(source)})
    for line in LINES:
        for into, times in (("devnull", r.devnull_s), ("cat", r.cat_s)):
            before = cpu_by_role(roles)
            times[line] = dirt.timed("prints", {"size": size, "line": line, "into": into})
            r.cpu[f"{into}/{line}"] = spent(before, cpu_by_role(roles))
        before = cpu_by_role(roles)
        r.print_s[line], r.first_output_s, r.output_read = printing(dirt, size, line)
        r.cpu[f"print/{line}"] = spent(before, cpu_by_role(roles))
    r.quick_s, r.quick_with_submit_s, r.still_running = quick_during_big(dirt, source, size)
    return r


def make_source(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(MiB, left)
            fh.write(os.urandom(n))
            left -= n


# ---- the table -----------------------------------------------------------------------------


def median(rounds: list[Round], key: Callable[[Round], float]) -> float:
    return statistics.median(key(r) for r in rounds)


def cpu_columns(rounds: list[Round], run: str) -> str:
    task, agent, master = (
        statistics.median(r.cpu[run][role] for r in rounds) for role in ("task", "agent", "master")
    )
    return f"{task:>12.2f}{agent:>7.2f}{master:>7.2f}"


def cpu_ratio(rounds: list[Round], line: int, roles: tuple[str, ...]) -> float:
    """Median over the rounds of the printing run's CPU over the /dev/null run's (`roles`)."""
    return statistics.median(
        sum(r.cpu[f"print/{line}"][k] for k in roles)
        / max(1e-9, sum(r.cpu[f"devnull/{line}"][k] for k in roles))
        for r in rounds
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table(rounds: list[Round], peaks: Peaks, size: int, load: tuple[float, float]) -> str:
    mib = size / MiB
    raw = median(rounds, lambda r: r.raw_s)
    attach = median(rounds, lambda r: r.attach_s)
    attach_ratio = median(rounds, lambda r: r.raw_s / r.attach_s)
    quick = median(rounds, lambda r: r.quick_s)
    quick_all = median(rounds, lambda r: r.quick_with_submit_s)
    uploading = sum(r.still_running[0] for r in rounds)
    printing = sum(r.still_running[1] for r in rounds)
    rss = {role: kib / 1024 for role, kib in peaks.kib.items()}
    rss_ok = rss["master"] < GOALS["rss_mib"] and rss["agent"] < GOALS["rss_mib"]
    lines = [
        f"{mib:g} MiB, local node ({SLOTS} slots, process isolation), `dirt serve` with web; "
        f"medians of {len(rounds)} rounds; load average {load[0]:.2f} -> {load[1]:.2f}",
        f"{'':<44}{'seconds':>8}{'MiB/s':>8}{'ratio':>8}{'goal':>9}{'':9}"
        f"{'CPU s: task':>12}{'agent':>7}{'master':>7}",
        f"{'raw execnet copy, 1 MiB chunks':<44}{raw:>8.2f}{mib / raw:>8.0f}",
        f"{'dirt: attachment by path (task time)':<44}{attach:>8.2f}{mib / attach:>8.0f}"
        f"{attach_ratio:>7.2f}x{'>= 0.5x':>9}  {verdict(attach_ratio >= GOALS['attach'])}",
    ]
    for line in LINES:
        devnull = statistics.median(r.devnull_s[line] for r in rounds)
        printed = statistics.median(r.print_s[line] for r in rounds)
        ratio = statistics.median(r.print_s[line] / r.devnull_s[line] for r in rounds)
        cat = statistics.median(r.cat_s[line] for r in rounds)
        cat_ratio = statistics.median(r.cat_s[line] / r.devnull_s[line] for r in rounds)
        met = verdict(ratio <= GOALS["print"])
        lines += [
            f"{f'task writing it to /dev/null, {line} B lines':<44}{devnull:>8.2f}"
            f"{mib / devnull:>8.0f}{'':34}{cpu_columns(rounds, f'devnull/{line}')}",
            f"{'  the same into a pipe read by `cat`':<44}{cat:>8.2f}{mib / cat:>8.0f}"
            f"{cat_ratio:>7.2f}x{'':18}{cpu_columns(rounds, f'cat/{line}')}",
            f"{f'dirt: task printing it, {line} B lines':<44}{printed:>8.2f}{mib / printed:>8.0f}"
            f"{ratio:>7.2f}x{'<= 1.5x':>9}  {met:<7}{cpu_columns(rounds, f'print/{line}')}",
            f"  by CPU: the task's own {cpu_ratio(rounds, line, ('task',)):.2f}x (the run time "
            "ratio when the agent has a core of its own), all three "
            f"{cpu_ratio(rounds, line, ('task', 'agent', 'master')):.2f}x (on one core)",
        ]
    lines += [
        f"  live output over HTTP: first bytes {median(rounds, lambda r: r.first_output_s):.2f} s"
        f" after the task started; {median(rounds, lambda r: r.output_read) / MiB:.1f} MiB read"
        " while it ran (the head, then the newest output every second)",
        f"peak RSS: master {rss['master']:.0f} MiB, node agent {rss['agent']:.0f} MiB "
        f"(its fork server {rss['fork']:.0f} MiB); goal < {GOALS['rss_mib']} MiB each: "
        f"{verdict(rss_ok)}",
        f"{QUICK_TASKS} trivial tasks during both big ones: all finished {quick:.2f} s after "
        f"`dirt submit` stored them ({quick_all:.2f} s with the submit process); goal <= "
        f"{GOALS['quick_s']:g} s: {verdict(quick_all <= GOALS['quick_s'])}; still running then: "
        f"the upload in {uploading}, the printing ({LINES[0]} B lines) in {printing} of "
        f"{len(rounds)} rounds",
        "ratio: attachment, dirt's throughput over the raw copy's; printing, its time over "
        "/dev/null's (`cat`: the least any capture through a pipe costs on this machine).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="bytes attached and printed (1GiB)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size)
    if not size or size < MiB:
        parser.error(f"--size: expected a size of at least 1 MiB, got {args.size!r}")
    load_before = os.getloadavg()[0]
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="dirt-bench-output-") as tmp:
        root = Path(tmp)
        source = root / "source.bin"
        make_source(source, size)
        project = make_project(root)
        dirt = Dirt(project)
        sampler = Sampler(dirt.serve.pid)
        try:
            sampler.start()
            dirt.wait(dirt.submit(["trivial"]), timeout=120)  # node connected, fork server warm
            wait_until(lambda: len(sampler.roles) == 3, "the agent and its fork server")
            for i in range(args.rounds):
                rounds.append(one_round(dirt, source, size, root, sampler.roles))
                r = rounds[-1]
                print(
                    f"round {i + 1}: raw {r.raw_s:.2f}s attach {r.attach_s:.2f}s "
                    + "".join(
                        f"devnull/{n} {r.devnull_s[n]:.2f}s cat/{n} {r.cat_s[n]:.2f}s "
                        f"print/{n} {r.print_s[n]:.2f}s "
                        for n in LINES
                    )
                    + f"quick {r.quick_s:.2f}s",
                    file=sys.stderr,
                )
            peaks = sampler.finish()
        finally:
            dirt.stop()
    print(table(rounds, peaks, size, (load_before, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
