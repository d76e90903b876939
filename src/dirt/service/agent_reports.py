"""What a pull-mode agent reports about its jobs, each named by its job token: heartbeats
(which renew the lease and bring back cancels), output and attachment chunks, the outcome, or
the job given back. See dirt.service.agents."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection

from dirt.blobs import UploadGap
from dirt.db import agents as agents_db
from dirt.db import output as output_db
from dirt.db.tokens import digest
from dirt.dispatch.connection import Outcome as WireOutcome
from dirt.dispatch.incoming import decode_tail
from dirt.dispatch.outcome import judge
from dirt.errors import InputError, StateError, UnauthorizedError
from dirt.models import AgentJob, Finished, OutputChunk, TaskState
from dirt.remote.protocol import OUTPUT_TAIL
from dirt.service.agents import JOB_MEMORY, Agents, JobOffer, upload_name

MAX_ATTACHMENTS = 10_000  # indexes of a job's uploads


class AgentReports(Agents):
    def _job(self, conn: Connection, job_id: int, token: str) -> AgentJob:
        job = agents_db.job_by_token(conn, digest(token))
        if job is None or job.id != job_id:
            raise UnauthorizedError(
                f"job token refused for job {job_id}: forged, or expired (a job's token is "
                f"forgotten {JOB_MEMORY / 3600:g} h after its job ends)"
            )
        if not job.token_valid:
            raise UnauthorizedError(
                f"job {job_id}: the agent token that took it was revoked; the job is void"
            )
        return job

    def _open_job(self, conn: Connection, job_id: int, token: str) -> AgentJob:
        job = self._job(conn, job_id, token)
        if job.closed is not None:
            raise StateError(_closed(job))
        return job

    def job_heartbeat(self, job_id: int, token: str, queued: bool = False) -> bool:
        """The agent still holds the job: its lease is renewed (and, while it is `queued` on
        the agent for a free slot, its deadline: its timeout has not begun). Returns whether
        someone asked to cancel its task (the agent then kills it). StateError when the job is
        closed."""
        now = time.time()

        def work(conn: Connection, seq: int) -> bool:
            job = self._open_job(conn, job_id, token)
            until = now + self.lease
            deadline = until + job.timeout if queued and job.timeout else None
            if not agents_db.renew_lease(conn, job.id, until, deadline):
                raise StateError(_closed(job))
            agents_db.seen_if_due(conn, job.node, now, now - self.seen_every, seq)
            return job.cancel_requested

        return self._write(work, wake=None)  # an agent's progress: see Agents._claim_next

    def job_output(self, job_id: int, token: str, start: int, data: bytes) -> None:
        """Store a chunk of the job's output (once, however often it is sent); it renews the
        lease too."""
        now = time.time()
        limit = self.settings.dispatch.output_limit
        head, tail = limit // 2, limit - limit // 2

        def work(conn: Connection, seq: int) -> None:
            job = self._open_job(conn, job_id, token)
            agents_db.renew_lease(conn, job.id, now + self.lease)
            if output_db.has_chunk(conn, job.task_id, job.attempt, start, start + len(data)):
                return
            chunk = OutputChunk(job.task_id, job.attempt, start, data)
            output_db.insert_output(conn, [chunk], head, tail)

        self._write(work)

    def job_upload(self, job_id: int, token: str, index: int, start: int, data: bytes) -> int:
        """Write a chunk of attachment `index` of the job's results; returns the bytes held."""
        if not 0 <= index < MAX_ATTACHMENTS:
            raise InputError(f"attachment index {index} is not 0-{MAX_ATTACHMENTS - 1}")
        limit = self.settings.dispatch.attachment_limit
        if start + len(data) > limit:
            raise InputError(
                f"attachment {index} would pass the limit of {limit} bytes "
                "([dispatch] attachment_limit)"
            )
        with self._read() as conn:
            job = self._open_job(conn, job_id, token)
        try:
            return self.blobs.append(upload_name(job.id, index), start, data)
        except UploadGap as exc:
            raise InputError(f"attachment {index}: {exc}") from None

    def finish_job(
        self,
        job_id: int,
        token: str,
        wire: tuple[Any, ...],
        *,
        then_claim: bool = False,
        prefetch: int = 0,
    ) -> tuple[TaskState, JobOffer | None]:
        """Store the job's outcome (``protocol.OUTCOME_FIELDS``; its output was sent before);
        returns the task's state, and with `then_claim` the agent's next job (or None; with
        `prefetch`, the jobs it queues beyond its slots count as in `claim_job`), in the
        same transaction: one request and one write per task for a busy agent. Sent again
        after a lost answer, it changes nothing; a job closed otherwise (its lease ran out, its
        deadline passed) is refused: StateError.

        Attachments are put in the blob store first, outside the transaction (a blob nobody
        names is harmless; a row naming no blob is not)."""
        now = time.time()
        ready: tuple[AgentJob, Finished, bool] | None = None
        results = wire[0]
        if isinstance(results, dict) and results.get("attachments"):
            with self._read() as conn:
                job = self._job(conn, job_id, token)
            if job.closed is None:
                ready = self._verdict(job, self._adopt_uploads(job, wire), now)
                self._to_blobs([ready[1]])

        def work(conn: Connection, seq: int) -> tuple[TaskState, JobOffer | None]:
            job, finished, infra = ready or self._verdict(self._job(conn, job_id, token), wire, now)
            if not agents_db.close_job(conn, job.id, now, agents_db.REPORTED):
                job = self._job(conn, job_id, token)
                state = job.task_state
                if job.end == agents_db.REPORTED and state is not None and state.finished:
                    return state, None  # stored already: this report came again
                raise StateError(_closed(job))
            tail = output_db.output_tail(conn, job.task_id, job.attempt, OUTPUT_TAIL)
            finished.output = decode_tail(tail) or None
            if not self._store_finished(conn, seq, [finished], job.claim):
                raise StateError(f"task {job.task_id} moved on; job {job.id}'s result is refused")
            node = agents_db.agent_node(conn, job.node)
            if node is None:
                return finished.state, None
            if not node.online or (node.last_seen or 0) < now - self.seen_every:
                agents_db.seen(conn, node.address, now, seq)
            if infra or (finished.state is TaskState.SUCCEEDED and node.penalty):
                agents_db.score(conn, job.node, seq, failure=infra)
                node.penalty += 1 if infra else -1
            if not then_claim:
                return finished.state, None
            candidates = self._candidates(conn, node, prefetch)
            offer = self._claim_first(conn, seq, node, candidates, job.agent_digest, now)
            return finished.state, offer

        return self._write(work, wake=None)  # an agent's progress: see Agents._claim_next

    def _verdict(
        self, job: AgentJob, wire: tuple[Any, ...], now: float
    ) -> tuple[AgentJob, Finished, bool]:
        """(job, the run to store, whether it failed for a reason of the node's own)."""
        outcome = WireOutcome.from_wire(job.task_id, wire)
        if job.cancel_requested and outcome.results is None and not outcome.timed_out:
            # The cancel ended it, whoever stopped it: a batch system's scancel signals every
            # process of the job before its agent can kill the task (the task's, or its fork
            # server's, whose death loses the task). A task that sent results finished first.
            outcome.killed = True
        verdict = judge(outcome, job.task_name, job.timeout)
        finished = Finished(
            task_id=job.task_id,
            attempt=job.attempt,
            node=job.node,
            state=verdict.state,
            results=verdict.results,
            reason=verdict.reason,
            module_sha256=job.module_sha256,
            completed=now,
            attachments=verdict.attachments,
        )
        infra = outcome.signal is not None and not (outcome.killed or outcome.timed_out)
        return job, finished, infra

    def _adopt_uploads(self, job: AgentJob, wire: tuple[Any, ...]) -> tuple[Any, ...]:
        """The outcome with each attachment the agent uploaded (``"stream": index``) made a
        blob, named by ``{"sha256", "size", "text"}`` under "blob"."""
        results = wire[0]
        items = results.get("attachments") if isinstance(results, dict) else None
        if not isinstance(items, list) or wire[1] is not None:
            return wire
        adopted = []
        total = 0
        for item in items:
            if isinstance(item, dict):
                item = {k: v for k, v in item.items() if k != "blob"}  # only ours is trusted
                index = item.pop("stream", None)
                if isinstance(index, int) and not isinstance(index, bool):
                    if not 0 <= index < MAX_ATTACHMENTS:
                        raise InputError(f"attachment stream {index} is out of range")
                    sha, size = self.blobs.adopt(upload_name(job.id, index))
                    total += size
                    item["blob"] = {"sha256": sha, "size": size, "text": bool(item.get("text"))}
                item.pop("text", None)
            adopted.append(item)
        if total > self.settings.dispatch.attachment_limit:
            return (None, "attachments over the limit ([dispatch] attachment_limit)", *wire[2:])
        return ({**results, "attachments": adopted}, *wire[1:])

    def abandon_job(self, job_id: int, token: str, reason: str) -> None:
        """The agent gives the job back (it is stopping): the task waits again at once."""
        with self._read() as conn:
            job = self._open_job(conn, job_id, token)
        why = f"agent {job.node} stopped while it ran" + (f": {reason}" if reason else "")
        self.requeue([(job.task_id, job.attempt)], why, claim=job.claim)
        now = time.time()
        self._write(lambda conn, seq: agents_db.close_job(conn, job.id, now, agents_db.ABANDONED))


_ENDED = {
    agents_db.REPORTED: "its result is stored",
    agents_db.LOST: "its lease ran out (no heartbeat) and its task moved on",
    agents_db.ABANDONED: "its agent gave it back",
    agents_db.TIMED_OUT: "it ran past its timeout and the master failed it",
}


def _closed(job: AgentJob) -> str:
    return (
        f"job {job.id} (attempt {job.attempt} of task {job.task_id}) is over: "
        f"{_ENDED.get(job.end or '', 'closed')}; this report is refused"
    )
