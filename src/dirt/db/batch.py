"""Batch nodes' settings and their jobs (one per attempt). Every change of a job is
conditional on the state its caller saw (still open, not yet started), so a job is started once
and closed once, whoever (the dispatcher's driver, the agent's first request) comes first."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, case, delete, func, insert, or_, select, update

from dirt.batch.jobs import BatchJob, BatchNode, Phase
from dirt.db.schema import agent_jobs, attempts, batch_jobs, batch_nodes, tasks
from dirt.models import TaskState

_OPEN = batch_jobs.c.closed.is_(None)


def _node(row: Any) -> BatchNode:
    args = row.submit_args
    if isinstance(args, str):
        args = json.loads(args)
    return BatchNode(
        address=row.address,
        partition=row.partition,
        login_host=row.login_host,
        submit_args=tuple(args or ()),
        max_jobs=row.max_jobs,
        workdir=row.workdir,
        system=row.system,
    )


def save_node(conn: Connection, node: BatchNode) -> None:
    """Add a batch node's settings, or replace them."""
    conn.execute(delete(batch_nodes).where(batch_nodes.c.address == node.address))
    conn.execute(
        insert(batch_nodes).values(
            address=node.address,
            system=node.system,
            partition=node.partition,
            login_host=node.login_host,
            submit_args=list(node.submit_args),
            max_jobs=node.max_jobs,
            workdir=node.workdir,
        )
    )


def get_node(conn: Connection, address: str) -> BatchNode | None:
    row = conn.execute(select(batch_nodes).where(batch_nodes.c.address == address)).first()
    return _node(row) if row is not None else None


def list_nodes(conn: Connection) -> list[BatchNode]:
    return [_node(row) for row in conn.execute(select(batch_nodes).order_by(batch_nodes.c.address))]


def _job(row: Any) -> BatchJob:
    return BatchJob(
        id=row.id,
        task_id=row.task_id,
        attempt=row.attempt,
        node=row.node,
        claim=row.claim,
        job_name=row.job_name,
        phase=Phase(row.phase),
        submitted=row.submitted,
        job_id=row.job_id,
        slurm_state=row.slurm_state,
        compute_host=row.compute_host,
        agent_job_id=row.agent_job_id,
        started=row.started,
        closed=row.closed,
        outcome=row.outcome,
    )


def insert_job(
    conn: Connection,
    *,
    task_id: str,
    attempt: int,
    node: str,
    claim: str,
    token_sha256: str,
    job_name: str,
    submitted: float,
) -> int:
    """A job about to be submitted (phase submitting); returns its row id."""
    result = conn.execute(
        insert(batch_jobs)
        .values(
            task_id=task_id,
            attempt=attempt,
            node=node,
            claim=claim,
            token_sha256=token_sha256,
            job_name=job_name,
            phase=Phase.SUBMITTING.value,
            submitted=submitted,
        )
        .returning(batch_jobs.c.id)
    )
    return int(result.scalar_one())


def delete_job(conn: Connection, job_row: int) -> None:
    """Forget a job that was never submitted (the batch system did not answer)."""
    conn.execute(delete(batch_jobs).where(batch_jobs.c.id == job_row, _OPEN))


def set_queued(conn: Connection, job_row: int, job_id: str, state: str) -> bool:
    """The batch system took the job as `job_id` (still submitting, or its agent started it
    before this write: the id is stored either way)."""
    result = conn.execute(
        update(batch_jobs)
        .where(batch_jobs.c.id == job_row)
        .values(
            job_id=job_id,
            slurm_state=state,
            phase=case(
                (batch_jobs.c.phase == Phase.SUBMITTING.value, Phase.QUEUED.value),
                else_=batch_jobs.c.phase,
            ),
        )
    )
    return result.rowcount == 1


def job_by_id(conn: Connection, job_row: int) -> BatchJob | None:
    row = conn.execute(select(batch_jobs).where(batch_jobs.c.id == job_row)).first()
    return _job(row) if row is not None else None


def agent_job_end(conn: Connection, agent_job_id: int) -> str | None:
    """How the agent job a batch job's agent opened closed (db.agents.ENDS); None: open."""
    query = select(agent_jobs.c.outcome).where(agent_jobs.c.id == agent_job_id)
    return conn.execute(query).scalar_one_or_none()


def job_by_token(conn: Connection, token_sha256: str) -> BatchJob | None:
    row = conn.execute(select(batch_jobs).where(batch_jobs.c.token_sha256 == token_sha256)).first()
    return _job(row) if row is not None else None


def open_jobs(conn: Connection, node: str | None = None) -> list[BatchJob]:
    """Open jobs (of one node), oldest first."""
    query = select(batch_jobs).where(_OPEN).order_by(batch_jobs.c.id)
    if node is not None:
        query = query.where(batch_jobs.c.node == node)
    return [_job(row) for row in conn.execute(query)]


def reported_open_jobs(conn: Connection, node: str) -> int:
    """Open jobs of `node` whose agent has reported: their batch jobs are about to end."""
    query = (
        select(func.count())
        .select_from(batch_jobs.join(agent_jobs, agent_jobs.c.id == batch_jobs.c.agent_job_id))
        .where(_OPEN, batch_jobs.c.node == node, agent_jobs.c.outcome.is_not(None))
    )
    return int(conn.execute(query).scalar_one())


def start_job(
    conn: Connection, job_row: int, agent_job_id: int, host: str | None, now: float
) -> bool:
    """The job's agent started its attempt; False when the job is closed or started already."""
    result = conn.execute(
        update(batch_jobs)
        .where(batch_jobs.c.id == job_row, _OPEN, batch_jobs.c.agent_job_id.is_(None))
        .values(
            phase=Phase.RUNNING.value,
            agent_job_id=agent_job_id,
            compute_host=host,
            started=now,
        )
    )
    return result.rowcount == 1


def set_state(conn: Connection, job_row: int, state: str, host: str | None) -> None:
    """Slurm's latest word on an open job (and the compute host, once it has one)."""
    values: dict[str, Any] = {"slurm_state": state}
    if host:
        values["compute_host"] = host
    conn.execute(update(batch_jobs).where(batch_jobs.c.id == job_row, _OPEN).values(**values))


def close_job(conn: Connection, job_row: int, now: float, outcome: str) -> bool:
    """Close an open job; False when someone closed it first."""
    result = conn.execute(
        update(batch_jobs)
        .where(batch_jobs.c.id == job_row, _OPEN)
        .values(phase=Phase.ENDED.value, closed=now, outcome=outcome)
    )
    return result.rowcount == 1


def to_cancel(conn: Connection, node: str) -> list[BatchJob]:
    """Open jobs of `node` whose task someone cancelled (or asked to cancel while it runs)."""
    query = (
        select(batch_jobs)
        .join(tasks, tasks.c.id == batch_jobs.c.task_id)
        .where(
            _OPEN,
            batch_jobs.c.node == node,
            batch_jobs.c.job_id.is_not(None),
            or_(
                tasks.c.cancel_requested.is_(True),
                tasks.c.state == TaskState.CANCELLED.value,
                tasks.c.attempts > batch_jobs.c.attempt,
            ),
        )
    )
    return [_job(row) for row in conn.execute(query)]


def latest_jobs(conn: Connection, task_ids: Iterable[str]) -> dict[str, BatchJob]:
    """Each task's latest batch job (its last attempt's), by task id."""
    ids = list(dict.fromkeys(task_ids))
    found: dict[str, BatchJob] = {}
    for start in range(0, len(ids), 500):
        query = (
            select(batch_jobs)
            .where(batch_jobs.c.task_id.in_(ids[start : start + 500]))
            .order_by(batch_jobs.c.attempt)
        )
        for row in conn.execute(query):
            found[row.task_id] = _job(row)
    return found


def jobs_of(conn: Connection, task_ids: Sequence[str]) -> list[BatchJob]:
    """Every batch job of these tasks, by task and attempt."""
    if not task_ids:
        return []
    query = (
        select(batch_jobs)
        .where(batch_jobs.c.task_id.in_(list(task_ids)))
        .order_by(batch_jobs.c.task_id, batch_jobs.c.attempt)
    )
    return [_job(row) for row in conn.execute(query)]


def explain_lost_attempt(conn: Connection, task_id: str, attempt: int, why: str) -> bool:
    """Put `why` (what Slurm says of the job) before a lost attempt's reason."""
    row = conn.execute(
        select(attempts.c.id, attempts.c.reason).where(
            attempts.c.task_id == task_id,
            attempts.c.number == attempt,
            attempts.c.outcome == "lost",
        )
    ).first()
    if row is None or (row.reason or "").startswith(why):
        return False
    reason = f"{why}; {row.reason}" if row.reason else why
    conn.execute(update(attempts).where(attempts.c.id == row.id).values(reason=reason))
    return True
