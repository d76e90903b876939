"""Batch nodes (Slurm): add one, hand its tasks to the batch system as jobs, and hear from each
job's one-shot agent. The dispatcher's side (submit, poll, cancel) is dirt.dispatch.batch_driver;
this is what it, `dirt nodes add` and the agent API write. See docs/batch.md.

A job is one attempt of a task. Submitting reserves the task under a claim of the job's own
(``agent:`` and random hex: the store keeps every other claimer off it, as for pull-mode agents)
and writes the job (phase submitting) with the sha256 of a one-use job token, before sbatch is
called: a master that dies in between finds the job by its name. The task stays waiting, shown
as `queued in Slurm as job N (...)`, until the job's agent presents the token: then the attempt
starts (running on the batch node, the compute host kept with the job) as an agent job, and
everything after is the pull agent's protocol. The token is good for that one start only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from dirt.batch import BatchError
from dirt.batch.jobs import (
    JOB_TOKEN_PREFIX,
    BatchJob,
    BatchNode,
    Phase,
    job_name,
)
from dirt.db import agents as agents_db
from dirt.db import batch as batch_db
from dirt.db import dispatching as dispatching_db
from dirt.db import nodes as nodes_db
from dirt.db import tasks as tasks_db
from dirt.db.tokens import digest
from dirt.dispatch.select import NodeView, satisfies
from dirt.errors import NotFoundError, StateError, UnauthorizedError
from dirt.models import Finished, Node, NodeKind, Task, TaskState
from dirt.service.agent_reports import AgentReports
from dirt.service.agents import JobOffer
from dirt.service.base import log

SEARCH = 4096  # waiting tasks read to find those a batch node can run


@dataclass(frozen=True)
class Submission:
    """A job to submit: its row, its task and the one-use token its agent presents."""

    job: BatchJob
    task: Task
    token: str
    timeout: float | None


class Batch(AgentReports):
    # ---- nodes -------------------------------------------------------------------------------

    def save_batch_node(self, settings: BatchNode, sys_info: dict[str, Any]) -> Node:
        """Add a batch node (its settings checked against the cluster by the caller), or
        refresh a known one (keeping `enabled`). StateError when another kind has its name."""
        now = time.time()

        def work(conn: Connection, seq: int) -> Node:
            known = nodes_db.get_node(conn, settings.address)
            if known is not None and known.kind is not NodeKind.SLURM:
                raise StateError(f"node {settings.address!r} exists and is not a batch node")
            node = Node(
                address=settings.address,
                enabled=known.enabled if known else True,
                online=True,
                slots=settings.max_jobs,
                slots_override=settings.max_jobs,
                sys_info=sys_info,
                added=known.added if known else now,
                last_seen=now,
                kind=NodeKind.SLURM,
            )
            nodes_db.upsert_node(conn, node, seq)
            batch_db.save_node(conn, settings)
            return node

        node = self._write(work, "node add", settings.address)
        log.info("Batch node %s (%d jobs at once)", node.address, node.slots)
        return node

    def batch_nodes(self) -> list[tuple[Node, BatchNode]]:
        """Every batch node with its settings."""
        with self._read() as conn:
            found = {n.address: n for n in nodes_db.list_nodes(conn)}
            return [(found[b.address], b) for b in batch_db.list_nodes(conn) if b.address in found]

    def batch_node_seen(self, address: str, error: str | None, sys_info: Any = None) -> None:
        """The batch system answered (or not: `error`); a fresh partition description."""
        values: dict[str, Any] = {"online": error is None, "last_error": error}
        if error is None:
            values["last_seen"] = time.time()
        if sys_info is not None:
            values["sys_info"] = sys_info
        self._write(lambda conn, seq: nodes_db.update_node(conn, address, seq, **values))

    # ---- submitting --------------------------------------------------------------------------

    def open_batch_jobs(self, node: str | None = None) -> list[BatchJob]:
        with self._read() as conn:
            return batch_db.open_jobs(conn, node)

    def batch_jobs_reported(self, node: str) -> int:
        """How many open jobs of `node` have their result in (they hold slots a moment more)."""
        with self._read() as conn:
            return batch_db.reported_open_jobs(conn, node)

    def reserve_batch_jobs(self, node: Node, room: int) -> list[Submission]:
        """Up to `room` waiting tasks `node` can run, each reserved as a new job (phase
        submitting) with its token; none while the node is disabled."""
        if room <= 0 or not node.enabled:
            return []
        view = NodeView(node.address, node.sys_info, node.slots)
        with self._read() as conn:
            waiting = agents_db.waiting(conn, SEARCH, self.settings.dispatch.order)
        candidates = [t for t in waiting if satisfies(t, view)][:room]
        if not candidates:
            return []
        now = time.time()

        def work(conn: Connection, seq: int) -> list[Submission]:
            made = []
            for task in candidates:
                claim = agents_db.CLAIM_PREFIX + secrets.token_hex(8)
                if not dispatching_db.reserve_tasks(conn, [task.id], claim, seq):
                    continue  # a dispatcher or an agent took it first
                token = JOB_TOKEN_PREFIX + secrets.token_urlsafe(32)
                attempt = task.attempts + 1
                name = job_name(task.id, attempt)
                row = batch_db.insert_job(
                    conn,
                    task_id=task.id,
                    attempt=attempt,
                    node=node.address,
                    claim=claim,
                    token_sha256=digest(token),
                    job_name=name,
                    submitted=now,
                )
                job = BatchJob(row, task.id, attempt, node.address, claim, name, Phase.SUBMITTING,
                               now)  # fmt: skip
                timeout = task.timeout or self.settings.dispatch.timeout or None
                made.append(Submission(job, task, token, timeout))
            return made

        return self._write(work)

    def batch_submitted(self, job: BatchJob, job_id: str, state: str = "PENDING") -> None:
        """The batch system took the job as `job_id`."""
        job.job_id, job.slurm_state = job_id, state
        if job.phase is Phase.SUBMITTING:
            job.phase = Phase.QUEUED
        self._write(lambda conn, seq: batch_db.set_queued(conn, job.id, job_id, state))

    def batch_not_submitted(self, job: BatchJob, error: BatchError, *, refused: bool) -> None:
        """sbatch did not take the job. `refused`: Slurm refused it for this task (the attempt
        fails with Slurm's words); else Slurm did not answer (the task waits again, untouched)."""
        now = time.time()

        def work(conn: Connection, seq: int) -> None:
            if not refused:
                batch_db.delete_job(conn, job.id)
                dispatching_db.release_reservations(conn, seq, job.claim, [job.task_id])
                return
            batch_db.close_job(conn, job.id, now, f"refused by Slurm: {error}")
            finished = Finished(
                task_id=job.task_id,
                attempt=job.attempt,
                node=job.node,
                state=TaskState.FAILED,
                results=None,
                reason=f"{job.node}: sbatch refused the job: {error}",
                module_sha256=None,
                completed=now,
                started=now,
            )
            self._store_finished(conn, seq, [finished], job.claim)

        self._write(work)

    # ---- tracking ----------------------------------------------------------------------------

    def batch_state(self, job: BatchJob, state: str, host: str | None) -> None:
        """Slurm's latest word on an open job, written when it changed."""
        if state == job.slurm_state and (not host or host == job.compute_host):
            return
        job.slurm_state, job.compute_host = state, host or job.compute_host
        self._write(lambda conn, seq: batch_db.set_state(conn, job.id, state, host))

    def batch_job_over(self, job: BatchJob) -> str | None:
        """How the job's attempt ended when its agent reported it (or the master closed its
        agent job otherwise): "reported", "lost", ...; None while the attempt is open."""
        with self._read() as conn:
            if job.agent_job_id is None:
                found = batch_db.job_by_id(conn, job.id)
                if found is None or found.agent_job_id is None:
                    return None
                job.agent_job_id, job.phase = found.agent_job_id, found.phase
                job.compute_host = found.compute_host or job.compute_host
            return batch_db.agent_job_end(conn, job.agent_job_id)

    def batch_job_ended(self, job: BatchJob, end: str, slurm_said: str) -> None:
        """The job ended after its agent job closed (`end`: reported, abandoned, lost, ...):
        closed; an attempt its agent gave back (Slurm stopped it: scancel, a time limit,
        preemption) is lost with Slurm's words first."""
        now = time.time()

        def work(conn: Connection, seq: int) -> None:
            batch_db.close_job(conn, job.id, now, f"{end}; Slurm: {slurm_said}")
            if end != agents_db.REPORTED:
                why = f"Slurm job {job.job_id} ended without a result: {slurm_said}"
                batch_db.explain_lost_attempt(conn, job.task_id, job.attempt, why)

        self._write(work)

    def close_batch_job(self, job: BatchJob, outcome: str) -> bool:
        now = time.time()
        return self._write(lambda conn, seq: batch_db.close_job(conn, job.id, now, outcome))

    def lose_batch_job(self, job: BatchJob, reason: str) -> tuple[list[str], list[str]]:
        """The job ended without a result: its attempt is lost with `reason` (the task waits
        again, or fails with no attempts left). An attempt whose agent never started is
        started first, so that it shows in the task's history. Returns requeue's answer."""
        now = time.time()

        def start(conn: Connection, seq: int) -> None:
            if job.agent_job_id is None:
                begin = (job.task_id, job.node, job.started or now, job.attempt)
                dispatching_db.start_tasks(conn, [begin], job.claim, seq)
            else:
                agents_db.close_job(conn, job.agent_job_id, now, agents_db.LOST)

        self._write(start)
        result = self.requeue([(job.task_id, job.attempt)], reason, node_lost=True, claim=job.claim)
        self.close_batch_job(job, reason)
        return result

    def batch_cancels(self, node: str) -> list[BatchJob]:
        """Open jobs of `node` whose task was cancelled (or moved on): to scancel now."""
        with self._read() as conn:
            return batch_db.to_cancel(conn, node)

    def batch_cancelled(self, job: BatchJob, state: str) -> None:
        """scancel reached the job: a task still only reserved for it is given back to every
        master (it was cancelled: nothing more to do); a running one is stored as cancelled
        when its agent reports, or by `lose_batch_job` when it cannot."""
        now = time.time()

        def work(conn: Connection, seq: int) -> None:
            if job.agent_job_id is None:
                dispatching_db.release_reservations(conn, seq, job.claim, [job.task_id])
                batch_db.close_job(conn, job.id, now, f"cancelled in dirt ({state})")

        self._write(work)

    # ---- the job's agent ---------------------------------------------------------------------

    def _batch_job(self, conn: Connection, token: str) -> BatchJob:
        job = batch_db.job_by_token(conn, digest(token))
        if job is None:
            raise UnauthorizedError("batch job token refused: forged, or its job is forgotten")
        return job

    def batch_register(self, token: str, sys_info: dict[str, Any]) -> tuple[BatchJob, Node]:
        """The job's agent says hello from its compute host (kept with the job). StateError
        when the job is over."""
        host = sys_info.get("hostname") if isinstance(sys_info, dict) else None
        with self._read() as conn:
            job = self._batch_job(conn, token)
            node = nodes_db.get_node(conn, job.node)
        if job.closed is not None or job.agent_job_id is not None or node is None:
            raise StateError(f"{job.describe()} is over (or started already): token refused")
        if isinstance(host, str) and host:
            self._write(lambda conn, seq: batch_db.set_state(conn, job.id, "RUNNING", host))
        return job, node

    def claim_batch_job(self, token: str) -> JobOffer:
        """Start exactly the attempt the token names, as an agent job, and hand it over.
        StateError (409) when the job is over, started already, or its task moved on (a
        cancel); the token is then spent."""
        now = time.time()
        with self._read() as conn:
            job = self._batch_job(conn, token)
            task = tasks_db.get_task(conn, job.task_id)
        if job.closed is not None or job.agent_job_id is not None or task is None:
            raise StateError(f"{job.describe()}: its attempt is over or started; token spent")
        try:
            module = self.modules.load(task.name)
        except (NotFoundError, OSError) as exc:
            raise StateError(f"task module {task.name} cannot be read: {exc}") from None
        timeout = task.timeout or self.settings.dispatch.timeout or None
        job_token = "dirtjob_" + secrets.token_urlsafe(32)

        def work(conn: Connection, seq: int) -> int:
            begin = (job.task_id, job.node, now, job.attempt)
            if not dispatching_db.start_tasks(conn, [begin], job.claim, seq):
                raise StateError(f"task {job.task_id} moved on (cancelled?): {job.describe()}")
            agent_job = agents_db.insert_job(
                conn,
                task_id=job.task_id,
                attempt=job.attempt,
                node=job.node,
                claim=job.claim,
                token_sha256=digest(job_token),
                agent_token_sha256=digest(token),
                started=now,
                lease_until=now + self.lease,
                timeout=timeout,
                module_sha256=module.sha256,
            )
            if not batch_db.start_job(conn, job.id, agent_job, job.compute_host, now):
                raise StateError(f"{job.describe()} started already: token spent")
            self._notice_started(conn, [job.task_id])
            return agent_job

        agent_job = self._write(work)
        log.info("%s -> %s (batch job %s)", task.id, job.node, job.job_id)
        return JobOffer(agent_job, task, job.attempt, job_token, module, timeout)

    # ---- reading -----------------------------------------------------------------------------

    def batch_jobs_of(self, task_ids: Sequence[str]) -> dict[str, BatchJob]:
        """Each task's latest batch job (for `dirt status` and the record page)."""
        with self._read() as conn:
            return batch_db.latest_jobs(conn, task_ids)
