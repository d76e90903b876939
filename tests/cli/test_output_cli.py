"""`dirt logs [-f]` and `dirt fetch`, run as a user runs them, against a real `dirt serve`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import serve
from tests.conftest import DIRT, add_local_node, run_dirt, wait_for

SLOW = """\
import os, time

def execute(lines=3, gate=None):
    for i in range(lines):
        print(f"step {i}", flush=True)
    while gate and not os.path.exists(gate):  # until the test has seen the lines
        time.sleep(0.05)
    print("done", flush=True)
    return {"success": True}
"""

ATTACH = """\
import hashlib, os

def execute(path):
    data = os.urandom(10 * (1 << 20) + 1)
    with open(path, "wb") as fh:
        fh.write(data)
    return {"success": True, "sha": hashlib.sha256(data).hexdigest(),
            "attachments": [{"filename": "build.tar", "path": path}]}
"""


def dirt_ok(*args: str, cwd: Path) -> str:
    result = run_dirt(*args, cwd=cwd)
    assert result.returncode == 0, f"dirt {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def task_of(cli_project: Path, record: str) -> dict:
    (task,) = json.loads(dirt_ok("status", record, "--json", cwd=cli_project))["tasks"]
    return task


@pytest.fixture
def served(cli_project: Path) -> Iterator[Path]:
    """The project with node `local` and `dirt serve` running."""
    add_local_node(cli_project)
    (cli_project / "tasks" / "slow.py").write_text(SLOW)
    (cli_project / "tasks" / "attach.py").write_text(ATTACH)
    server = serve(cli_project)
    try:
        yield cli_project
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def test_logs_follow_prints_lines_as_the_task_runs_and_stops_when_it_ends(
    served: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    dirt_ok("submit", "r1", "-t", "slow", "--kwargs", json.dumps({"gate": str(gate)}), cwd=served)
    task_id = task_of(served, "r1")["_id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    follower = subprocess.Popen(
        [DIRT, "logs", "-f", task_id],
        cwd=served,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert follower.stdout is not None
    stdout = follower.stdout
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 3, timeout=30, what="the task's lines")
        # The task cannot end before the gate exists: these lines came while it ran.
        assert task_of(served, "r1")["state"] == "running"
        assert follower.poll() is None  # still following
        gate.write_text("")
        reader.join(30)
        follower.wait(timeout=30)
        err = follower.stderr.read() if follower.stderr else ""
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.communicate(timeout=10)
    assert follower.returncode == 0
    assert lines == ["step 0\n", "step 1\n", "step 2\n", "done\n"]
    assert f"task {task_id} succeeded" in err


def test_logs_prints_a_finished_tasks_output(served: Path) -> None:
    dirt_ok("submit", "r1", "-t", "slow", "--wait", cwd=served)
    task_id = task_of(served, "r1")["_id"]
    assert dirt_ok("logs", task_id, cwd=served) == "step 0\nstep 1\nstep 2\ndone\n"
    bad = run_dirt("logs", "no-such-task", cwd=served)
    assert bad.returncode == 2 and "no task 'no-such-task'" in bad.stderr


def test_fetch_saves_an_attachment_with_the_tasks_sha256(served: Path, tmp_path: Path) -> None:
    node_file = tmp_path / "on-the-node.tar"
    kwargs = json.dumps({"path": str(node_file)})
    dirt_ok("submit", "r1", "-t", "attach", "--kwargs", kwargs, "--wait", cwd=served)
    task = task_of(served, "r1")
    target = tmp_path / "fetched.tar"
    result = run_dirt("fetch", task["_id"], "build.tar", "-o", str(target), cwd=served)
    assert result.returncode == 0, result.stderr
    assert f"saved build.tar ({10 * (1 << 20) + 1} bytes) to {target}" in result.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == task["results"]["sha"]
    again = run_dirt("fetch", task["_id"], "build.tar", "-o", str(target), cwd=served)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    forced = run_dirt("fetch", task["_id"], "build.tar", "-o", str(target), "--force", cwd=served)
    assert forced.returncode == 0
    piped = subprocess.run(
        [DIRT, "fetch", task["_id"], "build.tar", "-o", "-"],
        cwd=served,
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("DIRT_")},
    )
    assert hashlib.sha256(piped.stdout).hexdigest() == task["results"]["sha"]
    # Without -o it lands in the working folder under its own name.
    dirt_ok("fetch", task["_id"], "build.tar", cwd=served)
    assert hashlib.sha256((served / "build.tar").read_bytes()).hexdigest() == task["results"]["sha"]
    missing = run_dirt("fetch", task["_id"], "nope.txt", cwd=served)
    assert missing.returncode == 2 and "has no attachment 'nope.txt'" in missing.stderr
