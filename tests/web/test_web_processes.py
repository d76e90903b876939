"""`dirt serve` runs its web server in processes of its own: they serve beside the dispatcher,
stop with it (even when it is killed), and one that dies is started again."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

from tests.conftest import wait_for
from tests.web.conftest import start_dirt, stop_dirt


def web_processes(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"dirt.web.child" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_the_web_runs_in_its_own_processes_and_stops_with_serve(project: Path) -> None:
    proc, url = start_dirt(project, "serve", "--workers", "2")
    try:
        children = web_processes(proc.pid)
        assert len(children) == 2
        assert all(healthy(url) for _ in range(10))
    finally:
        code, log = stop_dirt(proc)
    assert code == 0, log
    assert "2 web process(es)" in log
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=10, what="web to stop")


def test_web_processes_stop_when_serve_is_killed(project: Path) -> None:
    proc, url = start_dirt(project, "serve")
    children = web_processes(proc.pid)
    assert children and healthy(url)
    proc.kill()  # no chance to clean up: the web processes see their lifeline close
    proc.communicate()
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=15, what="web to stop")


def test_a_web_process_that_dies_is_started_again(project: Path) -> None:
    proc, url = start_dirt(project, "serve")
    try:
        (first,) = web_processes(proc.pid)
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: [p for p in web_processes(proc.pid) if p != first and alive(p)],
            timeout=20,
            what="another web process",
        )
        deadline = time.monotonic() + 20
        while not healthy(url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert healthy(url)
    finally:
        code, log = stop_dirt(proc)
    assert code == 0
    assert f"web process {first} exited" in log and "starting another" in log
