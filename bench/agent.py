"""Pull-mode agents: one agent's throughput next to dirt's own execnet local node, and how soon
an idle agent picks up a new task, in one run.

    .venv/bin/python bench/agent.py [--tasks 200] [--slots 2] [--rounds 5] [--pickups 20]

Each round measures, one after the other, the same trivial tasks two ways:

- dirt's execnet local node, process isolation, driven from the CLI exactly as bench/dispatch.py
  does (`dirt nodes add local --slots N`, `dirt submit FILE.json`, `dirt serve --no-web`);
- one pull-mode agent with N slots: a project with no node, `dirt serve` (dispatcher and web
  process), `dirt token create bench --scope agent`, the agent file the master serves at
  /agent.py run by /usr/bin/python3 in an empty environment from a folder of its own, warmed
  by a few tasks (its fork server started, its request for work held); then, timed,
  `dirt submit FILE.json`.

The rate is N / (first task started -> every result stored), as in bench/dispatch.py. CPU per task
is read from /proc over that part: the master (`dirt serve` and its web process) and the node
(the agent, its fork server and the task processes it reaped; for the local node, its processes).

Then, the agent idle (its request for work held by the master), one task at a time is submitted
from this process (as `dirt submit` would, another process than the master) and its pickup is
read from the store: the task's `started` (stamped by the master when the agent's claim commits)
minus the moment the submission committed. Medians over rounds; the ratio is the median of each
round's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dispatch import DIRT, TRIVIAL_MODULE, Run, cpu_seconds, dirt_cli, until_done
from dirt.config import load_settings
from dirt.service import Service

PYTHON = "/usr/bin/python3"
RATE_GOAL = 200.0  # tasks/s through one agent with 2 slots
RATIO_GOAL = 0.3  # of the execnet local node's rate
PICKUP_GOAL_MS = 50.0
URL_LINE = re.compile(r"Web page and API at (https?://\S+/) ")


@dataclass
class AgentRound:
    run: Run
    pickups_ms: list[float]


def _start_serve(project: Path) -> tuple[subprocess.Popen[str], str]:
    serve = subprocess.Popen(
        [DIRT, "--project", str(project), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert serve.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = URL_LINE.search(serve.stdout.readline())
        if found:
            return serve, found.group(1)
    serve.kill()
    raise RuntimeError("dirt serve printed no URL")


def _start_agent(url: str, token: str, slots: int, folder: Path) -> subprocess.Popen[bytes]:
    agent_py = folder / "agent.py"
    with urllib.request.urlopen(url + "agent.py", timeout=30) as answer:
        agent_py.write_bytes(answer.read())
    command = ["env", "-i", PYTHON, str(agent_py), url, "--token", token]
    command += ["--slots", str(slots), "--name", "bench-agent", "--quiet"]
    return subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL)


def _pickups(service: Service, count: int) -> list[float]:
    """Milliseconds from a submission's commit to its task's start on the idle agent."""
    committed: list[float] = []
    service.add_listener(lambda _seq: committed.append(time.time()))
    found = []
    for i in range(count):
        time.sleep(0.3)  # idle: the agent's request for work is held again
        committed.clear()
        [task] = service.submit_tasks(f"pickup-{i}", ["trivial"]).tasks
        at = committed[0]
        while True:
            started = service.task(task.id).started
            if started is not None:
                break
            time.sleep(0.002)
        found.append(1000 * (started - at))
    return found


def agent_round(root: Path, n: int, slots: int, pickups: int) -> AgentRound:
    project = root / "bench-agent"
    subprocess.run([DIRT, "create", str(project)], check=True, capture_output=True)
    (project / "tasks" / "trivial.py").write_text(TRIVIAL_MODULE)
    docs = [{"_id": "bench", "type": "record"}] + [
        {"type": "task", "record_id": "bench", "name": "trivial"} for _ in range(n)
    ]
    (project / "tasks.json").write_text(json.dumps(docs))
    made = subprocess.run(
        [DIRT, "--project", str(project), "token", "create", "bench", "--scope", "agent"],
        check=True,
        capture_output=True,
        text=True,
    )
    token = made.stdout.strip().splitlines()[-1]
    service = Service(load_settings(project, environ={}))
    serve, url = _start_serve(project)
    host = root / "agent-host"
    host.mkdir()
    agent = _start_agent(url, token, slots, host)
    try:
        deadline = time.monotonic() + 60
        while not (service.nodes() and service.nodes()[0].online):
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError("the agent did not register")
            time.sleep(0.05)
        # Warm, as the local node's gateway is once its first task started: the agent's fork
        # server and connections up, its request for work held.
        warm = [t.id for t in service.submit_tasks("warm", ["trivial"] * 4 * slots).tasks]
        while not all(t.state.finished for t in service.tasks(warm)):
            time.sleep(0.01)
        time.sleep(0.3)
        submit = subprocess.run(
            [DIRT, "--project", str(project), "submit", "tasks.json"],
            cwd=project,
            capture_output=True,
        )
        assert submit.returncode == 0, submit.stderr
        first = until_done(
            service,
            n,
            "the agent",
            lambda: (sum(cpu_seconds(serve.pid)), sum(cpu_seconds(agent.pid))),
        )
        done = time.time()
        master, node = sum(cpu_seconds(serve.pid)), sum(cpu_seconds(agent.pid))
        tasks = service.record_detail("bench").tasks
        assert all(t.state.value == "succeeded" for t in tasks), "a benchmark task failed"
        latencies = _pickups(service, pickups)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        service.close()
    counted = n - first[0]
    first_start = min(t.started for t in tasks if t.started is not None)
    run = Run(
        rate=n / (done - first_start),
        master_ms=1000 * (master - first[1]) / counted,
        node_ms=1000 * (node - first[2]) / counted,
    )
    return AgentRound(run, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pickups", type=int, default=20, help="idle pickups timed per round")
    args = parser.parse_args()
    if not os.path.exists(PYTHON):
        sys.exit(f"{PYTHON} is needed: the agent runs on the system's own Python")
    local: list[Run] = []
    agents: list[AgentRound] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            local.append(dirt_cli(Path(tmp) / f"local-{i}", "process", args.tasks, args.slots))
            time.sleep(1)  # the local node's processes gone before the agent's run
            agents.append(
                agent_round(Path(tmp) / f"agent-{i}", args.tasks, args.slots, args.pickups)
            )
            print(
                f"round {i + 1}: local node {local[-1].rate:.0f}/s, agent "
                f"{agents[-1].run.rate:.0f}/s, pickup median "
                f"{statistics.median(agents[-1].pickups_ms):.1f} ms",
                file=sys.stderr,
            )
    print(table(local, agents, args))


def table(local: list[Run], agents: list[AgentRound], args: argparse.Namespace) -> str:
    runs = [a.run for a in agents]
    ratio = statistics.median(a.run.rate / lo.rate for a, lo in zip(agents, local, strict=True))
    rate = statistics.median(r.rate for r in runs)
    pickups = sorted(ms for a in agents for ms in a.pickups_ms)
    pickup = statistics.median(pickups)
    p90 = pickups[int(len(pickups) * 0.9)]

    def row(name: str, found: list[Run], middle: str) -> str:
        master = statistics.median(r.master_ms for r in found)
        node = statistics.median(r.node_ms for r in found)
        total = statistics.median(r.master_ms + r.node_ms for r in found)
        return (
            f"{name:<44}{statistics.median(r.rate for r in found):>8.0f}{middle}"
            f"{master:>21.3f}{node:>7.3f}{total:>7.3f}"
        )

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    return "\n".join(
        [
            f"{args.tasks} trivial tasks, {args.slots} slots, process isolation; medians of "
            f"{args.rounds} rounds",
            f"{'':<44}{'tasks/s':>8}{'vs local':>10}{'goal':>7}"
            f"{'CPU ms/task: master':>21}{'node':>7}{'total':>7}",
            row("dirt, execnet local node", local, " " * 17),
            row(
                "dirt, one pull-mode agent over HTTP",
                runs,
                f"{ratio:>9.2f}x{RATIO_GOAL:>6.1f}x",
            ),
            f"agent rate: {rate:.0f} tasks/s (goal >= {RATE_GOAL:.0f}): {met(rate >= RATE_GOAL)}; "
            f"vs the local node: {ratio:.2f}x (goal >= {RATIO_GOAL}x): {met(ratio >= RATIO_GOAL)}",
            f"idle pickup, submission committed -> task started on the agent, {len(pickups)} "
            f"pickups: median {pickup:.1f} ms, p90 {p90:.1f} ms (goal <= {PICKUP_GOAL_MS:.0f} "
            f"ms): {met(pickup <= PICKUP_GOAL_MS)}",
            "master = `dirt serve` with its web process (the local node's run: --no-web); node =",
            "the agent, its fork server and tasks (or the local node's processes).",
        ]
    )


if __name__ == "__main__":
    main()
