"""Pull-mode agents: register a node that fetches its own work, hand it jobs, hear its
heartbeats, output and results, and give up on it when its lease runs out.

A job is one attempt of a task, claimed for the agent by the dispatcher's own atomic
reservation (db.dispatching) under a claim id of the job's own (``agent:...``): a dispatcher
and an agent, or two agents, never get the same task. Everything the agent sends names its job
by a per-attempt job token (only its sha256 is stored). Every step is a conditional write
whichever web process makes it: a lease is renewed only while its job is open; a job is closed
once, by whoever comes first (its result, its lost lease, its deadline); a result for a job
closed otherwise is refused (StateError, 409), so no task is stored twice.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Connection

from dirt.db import agents as agents_db
from dirt.db import dispatching as dispatching_db
from dirt.db import nodes as nodes_db
from dirt.db.tokens import digest
from dirt.dispatch.select import NodeView, satisfies
from dirt.documents.agents import Registration
from dirt.errors import NotFoundError, StateError, UnauthorizedError
from dirt.models import AgentJob, Finished, Node, NodeKind, Task, TaskState
from dirt.project import TaskModule
from dirt.service.base import EVERYTHING, log
from dirt.service.dispatching import Dispatching

JOB_MEMORY = 86400.0  # a closed job's token is known (409, not 401) for a day
WINDOWS = (4, 64, 1024, 16384)  # waiting tasks read per claim: a few, then ever more
CLAIM_TRIES = 8  # candidates one claim tries (others may take the first ones meanwhile)


@dataclass(frozen=True)
class JobOffer:
    """A job handed to an agent: what `POST /api/agent/jobs/request` answers with."""

    job_id: int
    task: Task
    attempt: int
    token: str
    module: TaskModule
    timeout: float | None


@dataclass(frozen=True)
class Sweep:
    """What one look at the agents' leases did."""

    lost: list[str]  # task ids whose lease ran out (waiting again, or failed: no attempts left)
    timed_out: list[str]  # task ids past their deadline (failed by the master's backstop)
    offline: list[str]  # agent nodes not seen for a lease


def upload_name(job_id: int, index: int) -> str:
    return f"agent-{job_id}-{index}"


class Agents(Dispatching):
    @property
    def lease(self) -> float:
        return self.settings.agents.lease

    @property
    def seen_every(self) -> float:
        """How often an agent's activity is noted on its node (it shows online by it)."""
        return min(5.0, self.lease / 4)

    # ---- registering -------------------------------------------------------------------------

    def register_agent(self, registration: Registration) -> Node:
        """Add the agent's node (kind agent), or refresh it (keeping `enabled` and its score);
        StateError when a node of another kind has its name."""
        now = time.time()
        name = registration.name

        def work(conn: Connection, seq: int) -> Node:
            known = nodes_db.get_node(conn, name)
            if known is not None and known.kind is not NodeKind.AGENT:
                raise StateError(
                    f"node {name!r} exists and is reached over SSH; start the agent with "
                    "another --name, or `dirt nodes remove` that node first"
                )
            node = Node(
                address=name,
                enabled=known.enabled if known else True,
                online=True,
                slots=registration.slots,
                sys_info=registration.sys_info,
                added=known.added if known else now,
                last_seen=now,
                load=registration.sys_info.get("load"),
                kind=NodeKind.AGENT,
                penalty=known.penalty if known else 0,
            )
            nodes_db.upsert_node(conn, node, seq)
            return node

        # News of a node, which may run waiting tasks: dispatchers survey the nodes again.
        node = self._write(work, "agent register", name, wake=EVERYTHING)
        log.info("Agent %s registered (%d slots)", name, node.slots)
        return node

    def _agent_node(self, conn: Connection, name: str) -> Node:
        node = agents_db.agent_node(conn, name)
        if node is None:
            raise NotFoundError(f"no agent node {name!r}: the agent registers first")
        return node

    # ---- claiming ----------------------------------------------------------------------------

    def claim_job(
        self, name: str, agent_token: str, now: float | None = None, prefetch: int = 0
    ) -> JobOffer | None:
        """The next waiting task agent node `name` can run, claimed for it as a new job; None
        when there is none (or the node is disabled, or it holds as many jobs as its slots and
        `prefetch`, the jobs it queues beyond them). UnauthorizedError
        when `agent_token` is not a valid agent token (revoked meanwhile). Writes nothing
        unless it claims, or the node's last poll is a while ago (it shows online by polling).
        """
        return self._claim_next(name, digest(agent_token), now, prefetch)

    def any_claimable(self) -> bool:
        """Whether any task waits that no one holds (one indexed read)."""
        with self._read() as conn:
            return agents_db.any_waiting(conn)

    def jobs_to_cancel(self) -> frozenset[int]:
        """Open jobs whose task someone asked to cancel (one read: see web.agent_api.Cancels)."""
        with self._read() as conn:
            return agents_db.jobs_to_cancel(conn)

    def _claim_next(
        self, name: str, agent_digest: str, now: float | None = None, prefetch: int = 0
    ) -> JobOffer | None:
        now = time.time() if now is None else now
        with self._read() as conn:
            if not agents_db.agent_token_valid(conn, agent_digest):
                raise UnauthorizedError(
                    "the agent token was revoked (or never was one): make one with `dirt token "
                    "create NAME --scope agent`"
                )
            node = self._agent_node(conn, name)
            seen_due = not node.online or (node.last_seen or 0) < now - self.seen_every
            candidates = self._candidates(conn, node, prefetch)
        # An agent's progress (its claims, results, heartbeats, polls) wakes no one, as a
        # dispatcher's own does not: no one waits for it (readers poll), and a dispatcher
        # that heard of it would survey the store again for every task an agent runs.
        if not candidates:
            if seen_due:
                self._write(lambda conn, seq: agents_db.seen(conn, name, now, seq), wake=None)
            return None

        def work(conn: Connection, seq: int) -> JobOffer | None:
            if seen_due:
                agents_db.seen(conn, name, now, seq)
            return self._claim_first(conn, seq, node, candidates, agent_digest, now)

        return self._write(work, wake=None)

    def _candidates(self, conn: Connection, node: Node, prefetch: int = 0) -> list[Task]:
        """Waiting tasks no one holds that `node` can run, in the dispatch order; none while
        it is disabled or holds as many jobs as its slots and `prefetch` (queued on the agent
        for the next free slot)."""
        held = agents_db.open_jobs(conn, node.address)
        if not node.enabled or held >= node.capacity + prefetch:
            return []
        view = NodeView(node.address, node.sys_info, node.slots)
        order = self.settings.dispatch.order
        for window in WINDOWS:
            waiting = agents_db.waiting(conn, window, order)
            found = [t for t in waiting if satisfies(t, view)]
            if found or len(waiting) < window:
                return found[:CLAIM_TRIES]
        return []

    def _claim_first(
        self,
        conn: Connection,
        seq: int,
        node: Node,
        candidates: list[Task],
        agent_digest: str,
        now: float,
    ) -> JobOffer | None:
        """Claim the first of `candidates` still free for `node` (in the caller's write
        transaction). A task whose module is gone or unreadable fails instead."""
        for task in candidates:
            try:
                module = self.modules.load(task.name)
            except (NotFoundError, OSError) as exc:
                reason = (
                    str(exc)
                    if isinstance(exc, NotFoundError)
                    else (f"task module {task.name} cannot be read: {exc}")
                )
                if dispatching_db.fail_waiting(conn, task.id, reason, now, seq):
                    self._notice_finished(conn, [task.id])
                    log.error("Task %s failed: %s", task.id, reason)
                continue
            offer = self._claim(conn, seq, node, task, module, agent_digest, now)
            if offer is not None:
                log.info("%s -> %s", task.id, node.address)
                return offer
        return None

    def _claim(
        self,
        conn: Connection,
        seq: int,
        node: Node,
        task: Task,
        module: TaskModule,
        agent_digest: str,
        now: float,
    ) -> JobOffer | None:
        claim = agents_db.CLAIM_PREFIX + secrets.token_hex(8)
        if not dispatching_db.reserve_tasks(conn, [task.id], claim, seq):
            return None  # another agent or a dispatcher took it first
        attempt = task.attempts + 1
        start = (task.id, node.address, now, attempt)
        if not dispatching_db.start_tasks(conn, [start], claim, seq):
            dispatching_db.release_reservations(conn, seq, claim, [task.id])
            return None
        self._notice_started(conn, [task.id])
        token = "dirtjob_" + secrets.token_urlsafe(32)
        timeout = task.timeout or self.settings.dispatch.timeout or None
        job_id = agents_db.insert_job(
            conn,
            task_id=task.id,
            attempt=attempt,
            node=node.address,
            claim=claim,
            token_sha256=digest(token),
            agent_token_sha256=agent_digest,
            started=now,
            lease_until=now + self.lease,
            timeout=timeout,
            module_sha256=module.sha256,
        )
        return JobOffer(job_id, task, attempt, token, module, timeout)

    # ---- leases --------------------------------------------------------------------------------

    def expire_agent_leases(self, now: float | None = None) -> Sweep:
        """Give up on jobs whose lease ran out (the task waits again, or fails with no attempts
        left; the node's score drops) or whose deadline passed (the task fails: the master's
        timeout backstop); show agents offline once they have not polled for a lease; forget
        jobs closed a day ago. Safe in any number of processes at once: each step is
        conditional, and a task is requeued before its job is closed, so a step cut short is
        finished by the next sweep."""
        now = time.time() if now is None else now
        with self._read() as conn:
            overdue = agents_db.overdue_jobs(conn, now)
            stale = agents_db.stale_agents(conn, now - self.lease)
            forget = agents_db.has_closed_before(conn, now - JOB_MEMORY)
        sweep = Sweep([], [], [])
        for job in overdue:
            if job.lease_until < now:
                self._lose(job, now, sweep)
            else:
                self._time_out(job, now, sweep)
        if stale or forget:

            def work(conn: Connection, seq: int) -> int:
                agents_db.purge_closed(conn, now - JOB_MEMORY)
                return agents_db.mark_offline(conn, stale, now - self.lease, seq)

            if self._write(work):
                sweep.offline.extend(stale)
                for name in stale:
                    log.warning("Agent %s offline: no request for %g s", name, self.lease)
        return sweep

    def _lose(self, job: AgentJob, now: float, sweep: Sweep) -> None:
        reason = f"agent {job.node} lost: no heartbeat for {self.lease:g} s"
        requeued, failed = self.requeue(
            [(job.task_id, job.attempt)], reason, node_lost=True, claim=job.claim
        )

        def work(conn: Connection, seq: int) -> bool:
            closed = agents_db.close_job(conn, job.id, now, agents_db.LOST)
            if requeued or failed:
                agents_db.score(conn, job.node, seq, failure=True)
            return closed

        self._write(work)
        if requeued or failed:
            sweep.lost.append(job.task_id)

    def _time_out(self, job: AgentJob, now: float, sweep: Sweep) -> None:
        finished = Finished(
            task_id=job.task_id,
            attempt=job.attempt,
            node=job.node,
            state=TaskState.FAILED,
            results=None,
            reason=f"timed out after {job.timeout:g} s; agent {job.node} did not report it "
            f"within {self.lease:g} s more (the master's backstop)",
            module_sha256=job.module_sha256,
            completed=now,
        )

        def work(conn: Connection, seq: int) -> bool:
            if not agents_db.close_job(conn, job.id, now, agents_db.TIMED_OUT):
                return False
            return bool(self._store_finished(conn, seq, [finished], job.claim))

        if self._write(work):
            sweep.timed_out.append(job.task_id)
            log.warning("Task %s: %s", job.task_id, finished.reason)
