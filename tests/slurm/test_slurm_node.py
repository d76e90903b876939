"""The `slurm:PARTITION` node kind end to end, on the real one-host cluster: tasks become
Slurm jobs that run the served agent.py once, report over HTTP, and are tracked by squeue."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dirt.batch import slurm
from dirt.batch.commands import LocalRunner
from dirt.batch.nodes import describe_batch_node
from dirt.models import NodeKind, TaskState
from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.run import WebServer
from tests.conftest import RunningDispatcher, wait_finished, wait_for
from tests.slurm.cluster import SlurmCluster
from tests.slurm.conftest import wait_ended

SLEEPY = """
import time

def execute(seconds=0, **kwargs):
    time.sleep(seconds)
    return {"success": True, "slept": seconds}
"""


@dataclass
class Master:
    service: Service
    url: str
    runner: LocalRunner
    start: Callable[[], RunningDispatcher]

    def submit(self, name: str = "sleepy", **options: object) -> str:
        submission = self.service.submit_tasks("r1", [name], **options)  # type: ignore[arg-type]
        return submission.tasks[0].id

    def job(self, task_id: str) -> str:
        found = self.service.batch_jobs_of([task_id]).get(task_id)
        return found.job_id if found is not None and found.job_id else ""


@pytest.fixture
def master(
    slurm_cluster: SlurmCluster,
    slurm_runner: LocalRunner,
    service: Service,
    add_task_module: Callable[[str, str], str],
    start_dispatcher: Callable[[Service], RunningDispatcher],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Master]:
    """A master (web server and dispatcher) with the node slurm:debug."""
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    add_task_module("sleepy", SLEEPY)
    server = WebServer(create_app(service, bind_host="127.0.0.1"), "127.0.0.1", 0)
    url = server.start()
    service.settings.web.base_url = url
    settings, info = describe_batch_node(
        "slurm:debug", service.settings, max_jobs=10, workdir=str(tmp_path / "jobs")
    )
    service.save_batch_node(settings, info)
    try:
        yield Master(service, url, slurm_runner, lambda: start_dispatcher(service))
    finally:
        for job in service.open_batch_jobs():
            if job.job_id:
                slurm.cancel(job.job_id, runner=slurm_runner)
        server.stop()


def test_a_task_routed_to_slurm_succeeds_with_its_job_id(master: Master) -> None:
    node = master.service.node("slurm:debug")
    assert node.kind is NodeKind.SLURM and node.slots == 10
    assert node.sys_info["partition"] == "debug" and node.sys_info["cpu_count"] >= 1
    master.start()
    task_ids = [master.submit(kwargs={"seconds": 0}) for _ in range(3)]
    done = wait_finished(master.service, task_ids, timeout=60)
    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 3
    assert all(t.node == "slurm:debug" and t.results["slept"] == 0 for t in done)
    jobs = master.service.batch_jobs_of(task_ids)
    assert len({j.job_id for j in jobs.values()}) == 3
    for job in jobs.values():
        assert job.job_id and job.job_id.isdigit()
        assert job.compute_host, "the compute host is kept with the attempt"
        assert wait_ended(master.runner, job.job_id).state == "COMPLETED"
    wait_for(lambda: not master.service.open_batch_jobs(), what="jobs closed by the poll")


def running_job(master: Master, task_id: str) -> str:
    """The Slurm job id of `task_id` once its agent runs it."""

    def started() -> str:
        (task,) = master.service.tasks([task_id])
        return master.job(task_id) if task.state is TaskState.RUNNING else ""

    return wait_for(started, 60, what=f"task {task_id} running in Slurm")


def test_a_cancel_reaches_slurm_at_once(master: Master) -> None:
    master.start()
    task_id = master.submit(kwargs={"seconds": 60})
    job_id = running_job(master, task_id)
    master.service.cancel_task(task_id)
    status = wait_ended(master.runner, job_id, timeout=15)
    assert status.state == "CANCELLED"
    (task,) = wait_finished(master.service, [task_id], timeout=30)
    assert task.state is TaskState.CANCELLED


def test_a_job_scancelled_from_outside_is_a_lost_attempt_and_reruns(master: Master) -> None:
    master.start()
    task_id = master.submit(kwargs={"seconds": 30})
    first = running_job(master, task_id)
    slurm.cancel(first, runner=master.runner)  # an admin's scancel, say
    second = wait_for(
        lambda: (job := master.job(task_id)) != first and job, 60, what="a second job"
    )
    assert lost_first_attempt(master, task_id, first, "CANCELLED").outcome == "lost"
    assert second != first
    slurm.cancel(second, runner=master.runner)  # no need to wait for it


def lost_first_attempt(master: Master, task_id: str, job_id: str, state: str) -> Any:
    """The task's first attempt, once its reason gives Slurm's `state` for job `job_id`."""
    said = f"Slurm job {job_id} ended without a result: {state}"

    def first_attempt() -> object:
        attempt = master.service.record_detail("r1").attempts[task_id][0]
        return attempt if said in (attempt.reason or "") else None

    return wait_for(first_attempt, 15, what=f"Slurm's {state} on the first attempt")


def test_a_job_whose_node_fails_is_a_lost_attempt_and_reruns(
    master: Master, slurm_cluster: SlurmCluster
) -> None:
    master.start()
    task_id = master.submit(kwargs={"seconds": 30})
    first = running_job(master, task_id)
    node = f"nodename={slurm_cluster.node_name}"
    slurm_cluster.run("scontrol", "update", node, "state=down", "reason=dirt-test")
    try:
        assert wait_ended(master.runner, first, timeout=30).state == "NODE_FAIL"
        assert lost_first_attempt(master, task_id, first, "NODE_FAIL").outcome == "lost"
    finally:
        # With ReturnToService=2 the node may be back already (then resume is "invalid").
        slurm_cluster.run("scontrol", "update", node, "state=resume", check=False)
        wait_for(lambda: slurm_cluster.node_state() in ("idle", "mixed", "allocated"), 30)
    second = wait_for(lambda: (job := master.job(task_id)) != first and job, 30)
    slurm.cancel(second, runner=master.runner)


def test_a_restarted_master_re_adopts_its_running_jobs(master: Master) -> None:
    first = master.start()
    task_id = master.submit(kwargs={"seconds": 60})
    job_id = running_job(master, task_id)
    first.stop()  # the job goes on in Slurm
    assert slurm.poll([job_id], master.runner)[job_id].state == "RUNNING"
    master.start()
    master.service.cancel_task(task_id)  # only a driver that knows the job can scancel it
    assert wait_ended(master.runner, job_id, timeout=15).state == "CANCELLED"
    (task,) = wait_finished(master.service, [task_id], timeout=30)
    assert task.state is TaskState.CANCELLED
    assert task.attempts == 1


def test_requires_the_partition_cannot_meet_leaves_the_task_waiting(master: Master) -> None:
    master.start()
    task_id = master.submit(requires=["gpu in features"])
    master.submit(kwargs={"seconds": 0})  # the node does take what it can run
    wait_for(lambda: master.service.record_detail("r1").tasks[1].state.finished, 60)
    (task,) = master.service.record_detail("r1").tasks[:1]
    assert task.id == task_id and task.state is TaskState.WAITING
    assert "gpu" in (task.waiting_reason or ""), task.waiting_reason
    assert not master.job(task_id)


def test_a_job_slurm_queues_shows_its_task_waiting_with_slurms_reason(master: Master) -> None:
    cpus = int(master.service.node("slurm:debug").sys_info["cpus_total"])
    master.start()
    task_ids = [master.submit(kwargs={"seconds": 60}) for _ in range(cpus + 1)]

    def queued() -> str:
        for task in master.service.record_detail("r1").tasks:
            reason = task.waiting_reason or ""
            if task.id in task_ids and "(PENDING: " in reason:
                return reason
        return ""

    reason = wait_for(queued, 30, what="a task queued in Slurm, with Slurm's reason")
    assert re.fullmatch(r"queued in Slurm as job \d+ \(PENDING: (Resources|Priority)\)", reason)


def test_a_task_requiring_a_feature_asks_slurm_for_a_node_with_it(master: Master) -> None:
    master.start()
    task_id = master.submit(kwargs={"seconds": 0}, requires=["dirt_fast in features"])
    (task,) = wait_finished(master.service, [task_id], timeout=60)
    assert task.state is TaskState.SUCCEEDED
    shown = master.runner.run(["scontrol", "-o", "show", "job", master.job(task_id)]).stdout
    assert re.search(r"\bFeatures=dirt_fast\b", shown), shown
