"""The dispatcher with real SSH hosts: routing by requirements, one reused connection per node,
timeouts, cancel, retry, and hosts that die in the middle of a task."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, run_dirt, wait_finished, wait_for
from tests.ssh.conftest import add_node
from tests.ssh.sshd import Fleet, _descendants

pytestmark = pytest.mark.ssh

WHERE = """\
import os, platform

def execute(**kwargs):
    return {
        "success": True,
        "host": os.environ.get("DIRT_TEST_HOST"),
        "architecture": platform.machine(),
        "g4": os.environ.get("G4INSTALL"),
        "parent": os.getppid(),
    }
"""

SLEEPY = """\
import os, subprocess, time

def execute(seconds=60, pidfile=None):
    child = subprocess.Popen(["sleep", "300"])
    if pidfile:
        with open(pidfile + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {child.pid}")
        os.rename(pidfile + ".tmp", pidfile)
    time.sleep(seconds)
    return {"success": True, "host": os.environ.get("DIRT_TEST_HOST")}
"""

BROKEN = """\
def execute():
    raise RuntimeError("the task's own bug")
"""


@pytest.fixture
def modules(add_task_module: Callable[[str, str], str]) -> None:
    add_task_module("t.where", WHERE)
    add_task_module("t.sleepy", SLEEPY)
    add_task_module("t.broken", BROKEN)


@pytest.fixture
def running(service: Service, modules: None) -> Iterator[RunningDispatcher]:
    dispatcher = RunningDispatcher(service)
    yield dispatcher
    dispatcher.stop()


def submit(service: Service, name: str, n: int = 1, record: str = "r1", **opts: Any) -> list[str]:
    return [t.id for t in service.submit_tasks(record, [name] * n, **opts).tasks]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def read_pids(path: Path) -> list[int]:
    wait_for(path.exists, 30, what=f"{path} written by the task")
    return [int(p) for p in path.read_text().split()]


def ssh_clients(host: str) -> list[int]:
    """ssh processes this test process started to reach `host`."""
    found = []
    for pid in _descendants(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ssh") and host.encode() in argv:
            found.append(pid)
    return found


# ---- one connection per node ----------------------------------------------------------------


def test_every_task_on_a_node_goes_over_its_one_ssh_connection(
    service: Service, running: RunningDispatcher
) -> None:
    add_node(service, "node-a", slots=2)
    tasks = wait_finished(service, submit(service, "t.where", 12))
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    assert {t.results["host"] for t in tasks} == {"node-a"}
    assert len({t.results["parent"] for t in tasks}) == 1, "one agent's fork server ran them all"
    assert len(ssh_clients("node-a")) == 1


# ---- requirements ---------------------------------------------------------------------------


def test_each_task_lands_on_a_host_that_meets_its_requirements(
    service: Service, fleet: Fleet, running: RunningDispatcher
) -> None:
    fleet.add("g4-host", env={"G4INSTALL": "/opt/geant4"})
    add_node(service, "g4-host")
    add_node(service, "node-b", python="setarch i686 python3")  # reports architecture i686
    wanted = {
        "r-i686": ["architecture is i686"],
        "r-g4": ["G4INSTALL in environ"],
        "r-not-i686": ["architecture not i686"],
        "r-no-g4": ["G4INSTALL not_in environ", "/usr/bin in path"],
    }
    ids = {
        record: submit(service, "t.where", 3, record, requires=req)
        for record, req in wanted.items()
    }
    done = {record: wait_finished(service, task_ids) for record, task_ids in ids.items()}
    for record, tasks in done.items():
        assert {t.state for t in tasks} == {TaskState.SUCCEEDED}, record
    assert {t.results["architecture"] for t in done["r-i686"]} == {"i686"}
    assert {t.results["g4"] for t in done["r-g4"]} == {"/opt/geant4"}
    assert {t.results["host"] for t in done["r-not-i686"]} == {"g4-host"}
    assert {t.results["host"] for t in done["r-no-g4"]} == {"node-b"}


def test_a_task_no_node_meets_waits_with_a_reason_and_runs_when_one_is_added(
    service: Service, fleet: Fleet, running: RunningDispatcher, project: Path
) -> None:
    add_node(service, "node-a")
    [task_id] = submit(service, "t.where", requires=["GPU in environ"])
    reason = "no node has GPU in environ; 1 node checked"
    wait_for(lambda: service.task(task_id).waiting_reason == reason, 10, what="waiting reason")
    status = run_dirt("--project", str(project), "status", "r1", env={"COLUMNS": "300"})
    assert reason in status.stdout
    fleet.add("gpu-host", env={"GPU": "1"})
    add_node(service, "gpu-host")
    [task] = wait_finished(service, [task_id])
    assert task.state is TaskState.SUCCEEDED and task.node == "gpu-host"


# ---- timeouts -------------------------------------------------------------------------------


def test_a_task_out_of_time_is_killed_with_its_children(
    service: Service, running: RunningDispatcher, tmp_path: Path
) -> None:
    add_node(service, "node-a")
    pidfile = tmp_path / "pids"
    [task_id] = submit(service, "t.sleepy", kwargs={"pidfile": str(pidfile)}, timeout=1.5)
    pids = read_pids(pidfile)
    [task] = wait_finished(service, [task_id])
    assert task.state is TaskState.FAILED
    assert task.reason == "timed out after 1.5 s"
    wait_for(lambda: not any(alive(p) for p in pids), 10, what="task and child to be gone")


def test_the_default_timeout_comes_from_the_settings(
    service: Service, modules: None, tmp_path: Path
) -> None:
    service.settings.dispatch.timeout = 1.0
    add_node(service, "node-a")
    dispatcher = RunningDispatcher(service)
    try:
        [task] = wait_finished(service, submit(service, "t.sleepy"))
    finally:
        dispatcher.stop()
    assert task.state is TaskState.FAILED and task.reason == "timed out after 1 s"


# ---- cancel and retry -----------------------------------------------------------------------


def test_cancelling_a_waiting_task_is_immediate(service: Service, modules: None) -> None:
    [task_id] = submit(service, "t.where")
    task = service.cancel_task(task_id)
    assert task.state is TaskState.CANCELLED
    assert service.task(task_id).state is TaskState.CANCELLED


def test_cancelling_a_running_task_kills_it_on_its_node(
    service: Service, running: RunningDispatcher, tmp_path: Path, project: Path
) -> None:
    add_node(service, "node-a")
    pidfile = tmp_path / "pids"
    [task_id] = submit(service, "t.sleepy", kwargs={"pidfile": str(pidfile)})
    pids = read_pids(pidfile)
    result = run_dirt("--project", str(project), "cancel", task_id, env={"DIRT_LOG_FILE": ""})
    assert result.returncode == 0, result.stderr
    assert "cancel requested" in result.stdout
    [task] = wait_finished(service, [task_id], timeout=15)
    assert task.state is TaskState.CANCELLED
    wait_for(lambda: not any(alive(p) for p in pids), 10, what="task and child to be gone")


def test_a_task_failing_by_itself_is_not_retried(
    service: Service, running: RunningDispatcher
) -> None:
    add_node(service, "node-a")
    [task] = wait_finished(service, submit(service, "t.broken"))
    assert task.state is TaskState.FAILED and "the task's own bug" in task.reason
    assert task.attempts == 1


def test_retry_runs_a_failed_task_again_and_keeps_its_attempts(
    service: Service, running: RunningDispatcher, add_task_module: Callable[[str, str], str]
) -> None:
    add_node(service, "node-a")
    [task_id] = submit(service, "t.broken")
    wait_finished(service, [task_id])
    add_task_module("t.broken", WHERE)  # the bug is fixed
    assert service.retry_task(task_id).state is TaskState.WAITING
    [task] = wait_finished(service, [task_id])
    assert task.state is TaskState.SUCCEEDED and task.attempts == 2
    attempts = service.record_detail("r1").attempts[task_id]
    assert [a.outcome for a in attempts] == ["failed", "succeeded"]


def test_retry_failed_sends_every_failed_task_of_a_record_back(
    service: Service, running: RunningDispatcher, project: Path
) -> None:
    add_node(service, "node-a")
    broken = submit(service, "t.broken", 2)
    fine = submit(service, "t.where")
    wait_finished(service, broken + fine)
    result = run_dirt(
        "--project", str(project), "retry", "--failed", "r1", env={"DIRT_LOG_FILE": ""}
    )
    assert result.returncode == 0, result.stderr
    assert "2 failed task(s) of r1 waiting again" in result.stdout
    tasks = wait_finished(service, broken + fine)
    assert [t.attempts for t in tasks] == [2, 2, 1]


# ---- hosts that die -------------------------------------------------------------------------


def test_a_host_killed_mid_task_loses_nothing(
    service: Service, fleet: Fleet, running: RunningDispatcher, tmp_path: Path
) -> None:
    add_node(service, "node-a", slots=2)
    pidfiles = [tmp_path / f"pids{i}" for i in range(2)]
    ids = [
        submit(service, "t.sleepy", kwargs={"seconds": 2, "pidfile": str(p)})[0] for p in pidfiles
    ]
    for p in pidfiles:
        read_pids(p)  # both are running on node-a
    fleet.servers[0].kill_all()  # node-a dies: its sshd, agent and tasks
    # Added only now: probing it can outlast the tasks on a loaded machine.
    add_node(service, "node-b", slots=2)
    tasks = wait_finished(service, ids, timeout=30)
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    assert {t.node for t in tasks} == {"node-b"}
    assert {t.results["host"] for t in tasks} == {"node-b"}
    attempts = service.record_detail("r1").attempts
    for task_id in ids:
        assert [(a.node, a.outcome) for a in attempts[task_id]] == [
            ("node-a", "lost"),
            ("node-b", "succeeded"),
        ]
    node_a = wait_for(lambda: (n := service.node("node-a")) and not n.online and n, 10)
    assert "lost connection" in node_a.last_error or "refused" in node_a.last_error
    assert node_a.infra_failures >= 1


def test_a_task_that_loses_its_node_max_attempts_times_fails(
    service: Service, fleet: Fleet, running: RunningDispatcher, tmp_path: Path
) -> None:
    add_node(service, "node-a")
    pidfile = tmp_path / "pids"
    task_doc = {
        "type": "task",
        "record_id": "r1",
        "name": "t.sleepy",
        "kwargs": {"pidfile": str(pidfile)},
        "max_attempts": 1,
    }
    [task_id] = [t.id for t in service.submit([{"_id": "r1", "type": "record"}, task_doc]).tasks]
    read_pids(pidfile)
    fleet.servers[0].kill_all()
    [task] = wait_finished(service, [task_id], timeout=20)
    assert task.state is TaskState.FAILED
    assert "gave up after 1 attempt(s)" in task.reason


def test_an_offline_node_comes_back_by_itself(
    service: Service, fleet: Fleet, running: RunningDispatcher, project: Path
) -> None:
    add_node(service, "node-a")
    server = fleet.servers[0]
    wait_for(lambda: ssh_clients("node-a"), 10, what="the dispatcher to connect")
    server.kill_all()
    wait_for(lambda: not service.node("node-a").online, 15, what="node-a offline")
    listing = run_dirt("--project", str(project), "nodes", "list", env={"COLUMNS": "300"})
    assert "no (offline)" in listing.stdout
    assert "lost connection" in listing.stdout or "refused" in listing.stdout
    state = running.dispatcher.nodes["node-a"]
    wait_for(
        lambda: state.backoff > service.settings.dispatch.backoff_initial,
        10,
        what="retries to back off",
    )
    server.start(fleet.keys)
    wait_for(lambda: service.node("node-a").online, 15, what="node-a back online")
    [task] = wait_finished(service, submit(service, "t.where"))
    assert task.state is TaskState.SUCCEEDED and task.node == "node-a"


# ---- load -----------------------------------------------------------------------------------


def test_the_load_balancer_holds_tasks_while_every_node_is_too_loaded(
    service: Service, modules: None
) -> None:
    service.settings.dispatch.balancer = "load"
    service.settings.dispatch.load_margin = 1000.0  # no node is ever idle enough
    add_node(service, "node-a")
    dispatcher = RunningDispatcher(service)
    try:
        [task_id] = submit(service, "t.where")
        wait_for(
            lambda: "too loaded" in (service.task(task_id).waiting_reason or ""),
            15,
            what="the task to wait for load",
        )
        assert service.task(task_id).state is TaskState.WAITING
        service.settings.dispatch.load_margin = -1000.0
        [task] = wait_finished(service, [task_id], timeout=20)
    finally:
        dispatcher.stop()
    assert task.state is TaskState.SUCCEEDED


def test_the_load_is_read_over_the_open_connection(service: Service, modules: None) -> None:
    service.settings.dispatch.balancer = "load"
    service.settings.dispatch.load_margin = -1000.0
    add_node(service, "node-a")
    service.node_health("node-a", online=True, load=[-1.0, -1.0, -1.0])
    dispatcher = RunningDispatcher(service)
    try:
        wait_finished(service, submit(service, "t.where", 4))
        wait_for(lambda: (service.node("node-a").load or [-1])[0] >= 0, 15, what="a load reading")
        assert len(ssh_clients("node-a")) == 1
    finally:
        dispatcher.stop()
