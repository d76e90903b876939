"""Why a task run on a batch node waits: Slurm queues its job."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection

from dirt.batch.jobs import queued_reason
from dirt.db import batch as batch_db
from dirt.models import Task, TaskState


def explain_queued(conn: Connection, tasks: Sequence[Task]) -> None:
    """Waiting tasks whose batch job Slurm queues wait for Slurm: say so, with the job id."""
    waiting = [t for t in tasks if t.state is TaskState.WAITING]
    if not waiting:
        return
    jobs = batch_db.latest_jobs(conn, [t.id for t in waiting])
    for task in waiting:
        job = jobs.get(task.id)
        if job is not None and job.closed is None and job.attempt == task.attempts + 1:
            task.waiting_reason = queued_reason(job)
