"""The `slurm:PARTITION` node kind end to end, on the real one-host cluster: tasks become
Slurm jobs that run the served agent.py once, report over HTTP, and are tracked by squeue."""

from __future__ import annotations

import logging
import re

import pytest

from dirt.batch import slurm
from dirt.models import NodeKind, TaskState
from tests.conftest import wait_finished, wait_for
from tests.slurm.conftest import wait_ended
from tests.slurm.masters import Master, lost_first_attempt, running_job, told_on_timeout

# A cancel reaches a job two ways, whichever comes first: its agent's held heartbeat is answered
# at once (the agent kills the task and the job ends by itself), and the driver runs scancel.
CANCELLED_OR_ENDED = ("CANCELLED", "COMPLETED")


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


def test_a_cancel_reaches_slurm_at_once(master: Master, caplog: pytest.LogCaptureFixture) -> None:
    master.start()
    task_id = master.submit(kwargs={"seconds": 60})
    job_id = running_job(master, task_id)
    with caplog.at_level(logging.INFO, logger="dirt"):
        master.service.cancel_task(task_id)
        assert wait_ended(master.runner, job_id, timeout=15).state in CANCELLED_OR_ENDED
        (task,) = wait_finished(master.service, [task_id], timeout=30)
        wait_for(lambda: not master.service.open_batch_jobs(), what="the job closed")
    assert task.state is TaskState.CANCELLED
    assert caplog.text.count(f"scancel {job_id} (cancelled in dirt)") <= 1  # not at every step


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


def test_a_restarted_master_re_adopts_its_running_jobs(
    master: Master, caplog: pytest.LogCaptureFixture
) -> None:
    first = master.start()
    task_id = master.submit(kwargs={"seconds": 60})
    job_id = running_job(master, task_id)
    first.stop()  # the job goes on in Slurm
    assert slurm.poll([job_id], master.runner)[job_id].state == "RUNNING"
    with caplog.at_level(logging.INFO, logger="dirt"):
        master.start()
        wait_for(lambda: "re-adopting 1 job(s)" in caplog.text, 15, what="the job re-adopted")
    master.service.cancel_task(task_id)
    assert wait_ended(master.runner, job_id, timeout=15).state in CANCELLED_OR_ENDED
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
    with told_on_timeout(master, task_id):
        (task,) = wait_finished(master.service, [task_id], timeout=60)
    assert task.state is TaskState.SUCCEEDED
    shown = master.runner.run(["scontrol", "-o", "show", "job", master.job(task_id)]).stdout
    assert re.search(r"\bFeatures=dirt_fast\b", shown), shown
