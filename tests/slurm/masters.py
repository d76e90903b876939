"""A dirt master with the node slurm:debug on the one-host cluster (the `master` fixture of
conftest.py), and helpers to follow its tasks' Slurm jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
    workdir: str = ""  # where the jobs' output files are

    def submit(self, name: str = "sleepy", **options: object) -> str:
        submission = self.service.submit_tasks("r1", [name], **options)  # type: ignore[arg-type]
        return submission.tasks[0].id

    def job(self, task_id: str) -> str:
        found = self.service.batch_jobs_of([task_id]).get(task_id)
        return found.job_id if found is not None and found.job_id else ""


def slurm_story(master: Master, task_id: str) -> str:
    """What the store, Slurm and the job's output say of `task_id`'s job: for a test that
    timed out waiting for it."""
    lines = []
    for task in master.service.tasks([task_id]):
        lines.append(f"task: {task.state.value}, waiting reason {task.waiting_reason!r}")
    job = master.service.batch_jobs_of([task_id]).get(task_id)
    lines.append(f"batch job in the store: {job!r}")
    commands = [["sinfo", "-N", "-o", "%N %T %C %E"], ["squeue", "-o", "%i %T %r %C"]]
    if job is not None and job.job_id:
        commands.append(["scontrol", "-o", "show", "job", job.job_id])
    for argv in commands:
        done = master.runner.run(argv)
        lines.append(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}")
    for output in sorted(Path(master.workdir).glob("*")) if master.workdir else []:
        if output.is_file():
            lines.append(f"{output.name}: {output.read_text(errors='replace')[-2000:]}")
    return "\n".join(lines)


@contextmanager
def told_on_timeout(master: Master, task_id: str) -> Iterator[None]:
    """A wait for `task_id`'s job that times out says what Slurm and the job did."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{slurm_story(master, task_id)}") from None


def running_job(master: Master, task_id: str) -> str:
    """The Slurm job id of `task_id` once its agent runs it."""

    def started() -> str:
        (task,) = master.service.tasks([task_id])
        return master.job(task_id) if task.state is TaskState.RUNNING else ""

    with told_on_timeout(master, task_id):
        return str(wait_for(started, 60, what=f"task {task_id} running in Slurm"))


def lost_first_attempt(master: Master, task_id: str, job_id: str, state: str) -> Any:
    """The task's first attempt, once its reason gives Slurm's `state` for job `job_id`."""
    said = f"Slurm job {job_id} ended without a result: {state}"

    def first_attempt() -> object:
        attempt = master.service.record_detail("r1").attempts[task_id][0]
        return attempt if said in (attempt.reason or "") else None

    return wait_for(first_attempt, 15, what=f"Slurm's {state} on the first attempt")
