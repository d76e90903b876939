"""What the store keeps about batch nodes and their jobs (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

JOB_TOKEN_PREFIX = "dirtbatch_"  # a batch job's one-use token: names exactly one attempt
DEFAULT_MAX_JOBS = 100
DEFAULT_WORKDIR = "~/.dirt/slurm"


class Phase(StrEnum):
    """Where a batch job stands, as dirt last knew it."""

    SUBMITTING = "submitting"  # written before sbatch: a restart looks for it by name
    QUEUED = "queued"  # Slurm has it (its id is stored); its task waits, reserved
    RUNNING = "running"  # its agent started the attempt
    ENDED = "ended"  # closed: `outcome` says how


@dataclass(frozen=True)
class BatchNode:
    """A batch node's settings: `dirt nodes add slurm:PARTITION[@LOGIN_HOST] ...`."""

    address: str
    partition: str
    login_host: str | None = None
    submit_args: tuple[str, ...] = ()
    max_jobs: int = DEFAULT_MAX_JOBS
    workdir: str = DEFAULT_WORKDIR
    system: str = "slurm"


@dataclass
class BatchJob:
    """One attempt of a task run as one batch job."""

    id: int
    task_id: str
    attempt: int
    node: str
    claim: str
    job_name: str
    phase: Phase
    submitted: float
    job_id: str | None = None
    slurm_state: str | None = None
    compute_host: str | None = None
    agent_job_id: int | None = None
    started: float | None = None
    closed: float | None = None
    outcome: str | None = None

    def describe(self) -> str:
        """`slurm:debug job 1234 on node017`, as `dirt status` and the record page show it."""
        text = f"{self.node} job {self.job_id or '(submitting)'}"
        return f"{text} on {self.compute_host}" if self.compute_host else text


def job_name(task_id: str, attempt: int) -> str:
    """The Slurm job name: names the task and its attempt (`squeue -n` finds it after a crash)."""
    return f"dirt-{task_id}-a{attempt}"


def queued_reason(job: BatchJob) -> str:
    """Why a task whose job Slurm queues waits: `queued in Slurm as job 12 (PENDING: Priority)`."""
    if job.job_id is None:
        return f"being submitted to Slurm as {job.job_name} on {job.node}"
    state = f" ({job.slurm_state})" if job.slurm_state else ""
    return f"queued in Slurm as job {job.job_id}{state}"
