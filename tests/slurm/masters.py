"""A dirt master with the node slurm:debug on the one-host cluster (the `master` fixture of
conftest.py), and helpers to follow its tasks' Slurm jobs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dirt.batch.commands import LocalRunner
from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_for

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


def running_job(master: Master, task_id: str) -> str:
    """The Slurm job id of `task_id` once its agent runs it."""

    def started() -> str:
        (task,) = master.service.tasks([task_id])
        return master.job(task_id) if task.state is TaskState.RUNNING else ""

    return wait_for(started, 60, what=f"task {task_id} running in Slurm")


def lost_first_attempt(master: Master, task_id: str, job_id: str, state: str) -> Any:
    """The task's first attempt, once its reason gives Slurm's `state` for job `job_id`."""
    said = f"Slurm job {job_id} ended without a result: {state}"

    def first_attempt() -> object:
        attempt = master.service.record_detail("r1").attempts[task_id][0]
        return attempt if said in (attempt.reason or "") else None

    return wait_for(first_attempt, 15, what=f"Slurm's {state} on the first attempt")
