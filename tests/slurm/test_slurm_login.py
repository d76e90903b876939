"""A batch node whose Slurm commands run on a login host (`slurm:PARTITION@LOGIN_HOST`), through
the same execnet connection machinery as SSH nodes: `@local` is a local execnet process."""

from __future__ import annotations

import pytest

from dirt.models import TaskState
from tests.conftest import wait_finished
from tests.slurm.conftest import wait_ended
from tests.slurm.masters import Master, running_job


@pytest.fixture
def batch_address() -> str:
    return "slurm:debug@local"


def test_tasks_run_through_slurm_commands_on_the_login_host(master: Master) -> None:
    node = master.service.node("slurm:debug@local")
    assert node.sys_info["partition"] == "debug", "described by sinfo run on the login host"
    master.start()
    task_ids = [master.submit(kwargs={"seconds": 0}) for _ in range(2)]
    done = wait_finished(master.service, task_ids, timeout=60)
    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 2
    assert all(t.node == "slurm:debug@local" for t in done)
    for job in master.service.batch_jobs_of(task_ids).values():
        assert job.job_id and wait_ended(master.runner, job.job_id).state == "COMPLETED"


def test_a_cancel_reaches_slurm_through_the_login_host(master: Master) -> None:
    master.start()
    task_id = master.submit(kwargs={"seconds": 60})
    job_id = running_job(master, task_id)
    master.service.cancel_task(task_id)
    assert wait_ended(master.runner, job_id, timeout=15).state == "CANCELLED"
    (task,) = wait_finished(master.service, [task_id], timeout=30)
    assert task.state is TaskState.CANCELLED
