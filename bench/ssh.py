"""Per-task cost over SSH: dirt's reused connection against a new connection per task.

The original dirt opened a new execnet SSH gateway for every task, pinged the node over it,
ran the task and closed the gateway. dirt keeps one gateway per node open with an agent on it.
Both are measured here in the same run, against the same real sshd(s), which this script
starts itself (in network namespaces when run as root, else on loopback ports; see
tests/ssh/sshd.py). Then 500 trivial tasks go through the whole dispatcher to 2 SSH nodes.

    .venv/bin/python bench/ssh.py [--tasks 500] [--samples 200] [--original-samples 20]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import execnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dirt.config import NodeDefaults, load_settings
from dirt.dispatch import runner
from dirt.dispatch.connection import Outcome
from dirt.documents import parse_address
from dirt.project import create_project
from tests.ssh.sshd import Fleet

TRIVIAL = 'def execute():\n    return {"success": True}\n'
TRIVIAL_CHANNELEXEC = 'channel.send({"success": True})\n'
PING = "channel.send('pong')\n"


def dirt_per_task(options: NodeDefaults, samples: int) -> list[float]:
    """Seconds per task, send to outcome, over one open connection (process isolation)."""
    done = threading.Event()
    box: list[Outcome] = []

    def on_done(outcome: Outcome) -> None:
        box.append(outcome)
        done.set()

    connection = runner.connect("node-a", options, "process", on_done, lambda *a: None)
    sha = hashlib.sha256(TRIVIAL.encode()).hexdigest()
    times = []
    try:
        for i in range(samples + 5):
            done.clear()
            start = time.perf_counter()
            connection.run(f"t{i}", "bench.trivial", TRIVIAL, sha, {}, None)
            if not done.wait(30):
                raise RuntimeError("no outcome within 30 s")
            if i >= 5:  # the first few warm the fork server and send the source
                times.append(time.perf_counter() - start)
    finally:
        connection.close()
    assert all(o.results == {"success": True} for o in box), box[:3]
    return times


def original_per_task(options: NodeDefaults, samples: int) -> list[float]:
    """Seconds per task the original's way: new gateway, ping, run, close."""
    spec = runner.spec_for(parse_address("node-a"), options)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        gw = execnet.makegateway(spec)
        try:
            assert gw.remote_exec(PING).receive(30) == "pong"
            assert gw.remote_exec(TRIVIAL_CHANNELEXEC).receive(30) == {"success": True}
        finally:
            gw.exit()
            gw.join(10)
        times.append(time.perf_counter() - start)
    return times


def end_to_end(fleet: Fleet, ntasks: int) -> tuple[float, int]:
    from dirt.dispatch.loop import Dispatcher
    from dirt.service import Service

    folder = Path(tempfile.mkdtemp(prefix="dirt-bench-ssh-"))
    project = create_project(folder / "proj")
    (project / "tasks" / "bench").mkdir()
    (project / "tasks" / "bench" / "__init__.py").write_text("")
    (project / "tasks" / "bench" / "trivial.py").write_text(TRIVIAL)
    settings = load_settings(
        project,
        overrides={
            "dispatch": {"poll_interval": 0.01},
            "nodes": {"ssh_config": str(fleet.keys.ssh_config)},
            "log": {"file": ""},
        },
        environ={},
    )
    service = Service(settings)
    for name in ("node-a", "node-b"):
        service.save_node(name, runner.probe(name, settings.nodes), slots=4)
    dispatcher = Dispatcher(service)
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    dispatcher.ready.wait(30)
    # Let both connections open first: the figure is throughput, not connection set-up.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(n.online for n in service.nodes()):
        time.sleep(0.05)
    time.sleep(1.0)
    start = time.perf_counter()
    ids = [t.id for t in service.submit_tasks("bench", ["bench.trivial"] * ntasks).tasks]
    while True:
        found = service.tasks(ids)
        if all(t.state.finished for t in found):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    succeeded = sum(t.state.value == "succeeded" for t in found)
    dispatcher.stop()
    thread.join(30)
    service.close()
    return elapsed, succeeded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--original-samples", type=int, default=20)
    args = parser.parse_args()
    with Fleet() as fleet:
        fleet.add("node-a")
        fleet.add("node-b")
        where = (
            "network namespaces" if fleet.isolated else f"loopback ports ({fleet.why_not_isolated})"
        )
        print(f"2 sshd hosts in {where}")
        options = NodeDefaults(ssh_config=str(fleet.keys.ssh_config))
        ours = dirt_per_task(options, args.samples)
        theirs = original_per_task(options, args.original_samples)
        m_ours, m_theirs = statistics.median(ours), statistics.median(theirs)
        print()
        print(f"{'per trivial task over SSH':<44}{'median':>12}{'samples':>10}")
        print(
            f"{'original: new gateway + ping + run + close':<44}"
            f"{m_theirs * 1000:>10.1f}ms{len(theirs):>10}"
        )
        print(f"{'dirt: one reused connection, agent':<44}{m_ours * 1000:>10.2f}ms{len(ours):>10}")
        print(f"{'dirt is faster by':<44}{m_theirs / m_ours:>11.0f}x")
        elapsed, succeeded = end_to_end(fleet, args.tasks)
        print()
        print(f"{args.tasks} trivial tasks over 2 SSH nodes (4 slots each), submit to all stored:")
        print(f"  {elapsed:.2f} s, {args.tasks / elapsed:.0f} tasks/s, {succeeded} succeeded")


if __name__ == "__main__":
    main()
