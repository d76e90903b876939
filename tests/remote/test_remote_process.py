"""Process isolation: what one task does cannot reach another task or the gateway."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # The conftest here and tests/conftest.py share a module name: import for types only.
    from conftest import Node

SLOW_OK = """
import time

def execute(seconds):
    time.sleep(seconds)
    return {"success": True}
"""

QUICK_OK = "def execute():\n    return {'success': True}\n"


def gone(pid: int) -> bool:
    """True when pid no longer runs; a zombie left for a non-reaping init counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


def test_os_exit_gives_exit_code(process_node: Node) -> None:
    outcome = process_node.run("import os\nos._exit(3)\n")
    assert outcome.exit_code == 3
    assert outcome.signal is None
    assert outcome.results is None
    assert "exited with code 3" in outcome.error


def test_sigkill_gives_signal(process_node: Node) -> None:
    outcome = process_node.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert outcome.signal == signal.SIGKILL
    assert outcome.exit_code is None
    assert "SIGKILL" in outcome.error


def test_crash_leaves_concurrent_task_and_connection_alone(process_node: Node) -> None:
    slow = process_node.start(SLOW_OK, {"seconds": 0.5})
    crash = process_node.start("import os\nos._exit(3)\n")
    assert process_node.wait(crash).exit_code == 3
    slow_outcome = process_node.wait(slow)
    assert slow_outcome.error is None
    assert slow_outcome.results == {"success": True}
    assert process_node.conn.alive
    assert process_node.run(QUICK_OK).results == {"success": True}


def test_chdir_does_not_leak_into_next_task(process_node: Node, tmp_path: Path) -> None:
    before = process_node.run("import os\ndef execute():\n    return os.getcwd()\n").results
    process_node.run(f"import os\nos.chdir({str(tmp_path)!r})\nchannel.send(os.getcwd())\n")
    after = process_node.run("import os\ndef execute():\n    return os.getcwd()\n").results
    assert after == before != str(tmp_path)


def test_leaked_global_does_not_reach_next_task(process_node: Node) -> None:
    process_node.run("import json\njson.LEAKED = 1\nchannel.send(True)\n")
    outcome = process_node.run("import json\nchannel.send(hasattr(json, 'LEAKED'))\n")
    assert outcome.results is False


def test_timeout_kills_task_and_its_children(process_node: Node, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    outcome = process_node.run(
        """
        import subprocess, time

        def execute(pidfile):
            child = subprocess.Popen(["sleep", "60"])
            with open(pidfile, "w") as fh:
                fh.write(str(child.pid))
            time.sleep(60)
        """,
        {"pidfile": str(pidfile)},
        timeout=1.0,
    )
    assert outcome.timed_out
    assert outcome.signal == signal.SIGKILL
    assert wait_gone(int(pidfile.read_text()))


def test_kill_takes_the_process_group(process_node: Node, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    task_id = process_node.start(
        """
        import subprocess, time

        def execute(pidfile):
            child = subprocess.Popen(["sleep", "60"])
            with open(pidfile + ".tmp", "w") as fh:
                fh.write(str(child.pid))
            import os
            os.rename(pidfile + ".tmp", pidfile)
            time.sleep(60)
        """,
        {"pidfile": str(pidfile)},
    )
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process_node.conn.kill(task_id)
    outcome = process_node.wait(task_id)
    assert outcome.killed
    assert wait_gone(int(pidfile.read_text()))


def test_background_leftovers_are_killed_after_task(process_node: Node) -> None:
    outcome = process_node.run(
        """
        import subprocess

        def execute():
            return subprocess.Popen(["sleep", "60"]).pid
        """
    )
    assert wait_gone(outcome.results)


def test_forkserver_death_fails_in_flight_and_restarts(process_node: Node, tmp_path: Path) -> None:
    forkserver_pid = process_node.run("import os\nchannel.send(os.getppid())\n").results
    pidfile = tmp_path / "task.pid"
    slow = process_node.start(
        """
        import os, time

        def execute(pidfile):
            with open(pidfile + ".tmp", "w") as fh:
                fh.write(str(os.getpid()))
            os.rename(pidfile + ".tmp", pidfile)
            time.sleep(60)
        """,
        {"pidfile": str(pidfile)},
    )
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(forkserver_pid, signal.SIGKILL)
    outcome = process_node.wait(slow)
    assert "fork server died" in outcome.error
    assert "signal 9" in outcome.error
    # The orphaned task process is killed too, not left running without a parent to report.
    assert wait_gone(int(pidfile.read_text()))
    nxt = process_node.run("import os\nchannel.send(os.getppid())\n")
    assert nxt.error is None
    assert nxt.results != forkserver_pid
    assert process_node.conn.alive


def test_exit_code_zero_on_success(process_node: Node) -> None:
    outcome = process_node.run(QUICK_OK)
    assert outcome.exit_code == 0
    assert outcome.signal is None
    assert outcome.duration > 0


def test_stdin_is_empty(process_node: Node) -> None:
    outcome = process_node.run("import sys\nchannel.send(sys.stdin.read())\n")
    assert outcome.results == ""
