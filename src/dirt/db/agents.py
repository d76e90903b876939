"""Pull-mode agents' jobs and nodes: every statement is conditional on the state its caller saw,
so that any number of web processes may run them at once (a job is closed once, a lease renewed
only while its job is open, a node marked offline only while it still looks stale).

An agent's claim on a task is the dispatcher's own reservation (db.dispatching.reserve_tasks and
start_tasks) under a claim id of its own, ``agent:`` and random hex: the store keeps every other
claimer off the task, and finish_tasks and requeue_tasks take the claim id as their master.

A busy agent makes one request per task, which runs the statements marked hot here: each is
`Prepared` (compiled once), as the dispatcher's are.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)

from dirt.db.engine import Prepared
from dirt.db.schema import agent_jobs, api_tokens, batch_jobs, nodes, tasks
from dirt.db.tasks import task_from_fields, waiting_query
from dirt.models import AgentJob, Node, NodeKind, Task, TaskState, TokenScope

CLAIM_PREFIX = "agent:"
MAX_PENALTY = 4  # as the dispatcher's: slots halve per failure, down to 1/16
# How a job closes: its agent's result was stored; its lease ran out; its agent gave it back
# (stopping); its deadline passed with no word from the agent (the master's timeout backstop).
REPORTED = "reported"
LOST = "lost"
ABANDONED = "abandoned"
TIMED_OUT = "timed_out"
ENDS = (REPORTED, LOST, ABANDONED, TIMED_OUT)

_AGENT = nodes.c.kind == NodeKind.AGENT.value
_TOKEN_VALID = or_(
    exists().where(
        api_tokens.c.token_sha256 == agent_jobs.c.agent_token_sha256,
        api_tokens.c.scope == TokenScope.AGENT.value,
    ),
    # A batch job's agent took its job with the batch job's one-use token (dirt.service.batch).
    exists().where(batch_jobs.c.token_sha256 == agent_jobs.c.agent_token_sha256),
)
_JOB_COLUMNS = (
    agent_jobs.c.id,
    agent_jobs.c.task_id,
    agent_jobs.c.attempt,
    agent_jobs.c.node,
    agent_jobs.c.claim,
    agent_jobs.c.started,
    agent_jobs.c.lease_until,
    agent_jobs.c.deadline,
    agent_jobs.c.timeout,
    agent_jobs.c.module_sha256,
    agent_jobs.c.closed,
    agent_jobs.c.outcome,
    agent_jobs.c.agent_token_sha256,
)

# ---- hot statements -------------------------------------------------------------------------

_JOB_BY_TOKEN = Prepared(
    select(
        *_JOB_COLUMNS,
        _TOKEN_VALID.label("token_valid"),
        tasks.c.name,
        tasks.c.state,
        tasks.c.cancel_requested,
    )
    .join(tasks, tasks.c.id == agent_jobs.c.task_id)
    .where(agent_jobs.c.token_sha256 == bindparam("b_token"))
)
_AGENT_TOKEN = Prepared(
    select(api_tokens.c.id).where(
        api_tokens.c.token_sha256 == bindparam("b_token"),
        api_tokens.c.scope == TokenScope.AGENT.value,
    )
)
_OPEN_JOBS = Prepared(
    select(func.count()).where(
        agent_jobs.c.node == bindparam("b_node"), agent_jobs.c.closed.is_(None)
    )
)
_RENEW = Prepared(
    update(agent_jobs)
    .where(agent_jobs.c.id == bindparam("b_id"), agent_jobs.c.closed.is_(None))
    .values(lease_until=bindparam("b_until"))
)
_RENEW_QUEUED = Prepared(
    update(agent_jobs)
    .where(agent_jobs.c.id == bindparam("b_id"), agent_jobs.c.closed.is_(None))
    .values(lease_until=bindparam("b_until"), deadline=bindparam("b_deadline"))
)
_CLOSE = Prepared(
    update(agent_jobs)
    .where(agent_jobs.c.id == bindparam("b_id"), agent_jobs.c.closed.is_(None))
    .values(closed=bindparam("b_now"), outcome=bindparam("b_end"))
)
_INSERT = Prepared(
    insert(agent_jobs)
    .values(
        task_id=bindparam("b_task"),
        attempt=bindparam("b_attempt"),
        node=bindparam("b_node"),
        claim=bindparam("b_claim"),
        token_sha256=bindparam("b_token"),
        agent_token_sha256=bindparam("b_agent_token"),
        started=bindparam("b_started"),
        lease_until=bindparam("b_lease_until"),
        deadline=bindparam("b_deadline"),
        timeout=bindparam("b_timeout"),
        module_sha256=bindparam("b_sha"),
    )
    .returning(agent_jobs.c.id)
)
_NODE = Prepared(
    select(
        nodes.c.address,
        nodes.c.kind,
        nodes.c.enabled,
        nodes.c.online,
        nodes.c.slots,
        nodes.c.penalty,
        nodes.c.last_seen,
        nodes.c.sys_info,
    ).where(nodes.c.address == bindparam("b_address"))
)
_SEEN = Prepared(
    update(nodes)
    .where(nodes.c.address == bindparam("b_address"))
    .values(online=True, last_seen=bindparam("b_now"), last_error=None, seq=bindparam("b_seq"))
)
_SEEN_IF_DUE = Prepared(
    update(nodes)
    .where(
        nodes.c.address == bindparam("b_address"),
        or_(
            nodes.c.online.is_(False),
            nodes.c.last_seen.is_(None),
            nodes.c.last_seen < bindparam("b_before"),
        ),
    )
    .values(online=True, last_seen=bindparam("b_now"), last_error=None, seq=bindparam("b_seq"))
)
_WAITING = {
    order: Prepared(waiting_query(0, order).limit(bindparam("b_limit")))
    for order in ("fifo", "fair")
}


def _job(row: Any) -> AgentJob:
    """A job from a row (by column name: a mapping, or a row of _JOB_COLUMNS)."""
    fields = row if isinstance(row, dict) else dict(row._mapping)
    return AgentJob(
        id=fields["id"],
        task_id=fields["task_id"],
        attempt=fields["attempt"],
        node=fields["node"],
        claim=fields["claim"],
        started=fields["started"],
        lease_until=fields["lease_until"],
        deadline=fields["deadline"],
        timeout=fields["timeout"],
        module_sha256=fields["module_sha256"],
        closed=fields["closed"],
        end=fields["outcome"],
        agent_digest=fields["agent_token_sha256"],
    )


def job_by_token(conn: Connection, token_sha256: str) -> AgentJob | None:
    """The job whose token has this digest, with its task's name, state and cancel request,
    and whether the agent token that took it still exists; None when no job has it."""
    rows = _JOB_BY_TOKEN.fetch(conn, {"b_token": token_sha256})
    if not rows:
        return None
    row = rows[0]
    job = _job(row)
    job.token_valid = bool(row["token_valid"])
    job.task_name = row["name"]
    job.task_state = TaskState(row["state"])
    job.cancel_requested = bool(row["cancel_requested"])
    return job


def agent_token_valid(conn: Connection, token_sha256: str) -> bool:
    """Whether an agent token with this digest exists."""
    return bool(_AGENT_TOKEN.fetch(conn, {"b_token": token_sha256}))


def open_jobs(conn: Connection, node: str) -> int:
    """How many jobs `node` holds now."""
    return int(next(iter(_OPEN_JOBS.fetch(conn, {"b_node": node})[0].values())))


def jobs_to_cancel(conn: Connection) -> frozenset[int]:
    """Open jobs whose task someone asked to cancel."""
    query = (
        select(agent_jobs.c.id)
        .join(tasks, tasks.c.id == agent_jobs.c.task_id)
        .where(agent_jobs.c.closed.is_(None), tasks.c.cancel_requested.is_(True))
    )
    return frozenset(conn.execute(query).scalars())


def jobs_per_node(conn: Connection) -> dict[str, int]:
    """Open jobs of every agent node that holds any."""
    query = (
        select(agent_jobs.c.node, func.count())
        .where(agent_jobs.c.closed.is_(None))
        .group_by(agent_jobs.c.node)
    )
    return {node: count for node, count in conn.execute(query)}


def renew_lease(conn: Connection, job_id: int, until: float, deadline: float | None = None) -> bool:
    """Push an open job's lease to `until` (and its deadline to `deadline`, when given: the
    job waits on its agent for a slot); False when the job is closed."""
    if deadline is not None:
        row = {"b_id": job_id, "b_until": until, "b_deadline": deadline}
        return _RENEW_QUEUED.change(conn, row) == 1
    return _RENEW.change(conn, {"b_id": job_id, "b_until": until}) == 1


def close_job(conn: Connection, job_id: int, now: float, end: str) -> bool:
    """Close an open job (`end`: one of ENDS); False when someone closed it first (whoever did
    decided its end)."""
    assert end in ENDS
    return _CLOSE.change(conn, {"b_id": job_id, "b_now": now, "b_end": end}) == 1


def insert_job(
    conn: Connection,
    *,
    task_id: str,
    attempt: int,
    node: str,
    claim: str,
    token_sha256: str,
    agent_token_sha256: str,
    started: float,
    lease_until: float,
    timeout: float | None,
    module_sha256: str,
) -> int:
    """A new open job; returns its id. Its deadline (the master's backstop: the agent enforces
    the timeout) is the timeout and a lease more."""
    row = {
        "b_task": task_id,
        "b_attempt": attempt,
        "b_node": node,
        "b_claim": claim,
        "b_token": token_sha256,
        "b_agent_token": agent_token_sha256,
        "b_started": started,
        "b_lease_until": lease_until,
        "b_deadline": lease_until + timeout if timeout else None,
        "b_timeout": timeout,
        "b_sha": module_sha256,
    }
    return int(_INSERT.fetch(conn, row)[0]["id"])


def agent_node(conn: Connection, address: str) -> Node | None:
    """An agent node by its name (None: no such node, or not an agent), as claims need it."""
    rows = _NODE.fetch(conn, {"b_address": address})
    if not rows or rows[0]["kind"] != NodeKind.AGENT.value:
        return None
    row = rows[0]
    return Node(
        address=row["address"],
        kind=NodeKind.AGENT,
        enabled=bool(row["enabled"]),
        online=bool(row["online"]),
        slots=row["slots"],
        penalty=row["penalty"],
        last_seen=row["last_seen"],
        sys_info=_sys_info(row["sys_info"]),
    )


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> dict[str, Any]:
    found = json.loads(text)
    return found if isinstance(found, dict) else {}


def _sys_info(value: Any) -> dict[str, Any]:
    """A node's sys_info (with an environment it is big: parsed once per distinct text)."""
    if isinstance(value, dict):
        return value
    return dict(_parsed(value)) if isinstance(value, str) else {}


def seen(conn: Connection, address: str, now: float, seq: int) -> None:
    """The agent polled: online, seen now."""
    _SEEN.change(conn, {"b_address": address, "b_now": now, "b_seq": seq})


def seen_if_due(conn: Connection, address: str, now: float, before: float, seq: int) -> None:
    """The agent is at work: online, seen now, unless it was seen after `before` (a busy agent
    does not poll, its heartbeats and results show it alive; one write a while, not each)."""
    row = {"b_address": address, "b_now": now, "b_before": before, "b_seq": seq}
    _SEEN_IF_DUE.change(conn, row)


def waiting(conn: Connection, limit: int, order: str) -> list[Task]:
    """Waiting tasks no one holds, in `order` (db.tasks.waiting_tasks, compiled once)."""
    return [
        task_from_fields(
            {**fields, "kwargs": _json(fields["kwargs"]), "requires": _json(fields["requires"])}
        )
        for fields in _WAITING[order].fetch(conn, {"b_limit": limit})
    ]


def any_waiting(conn: Connection) -> bool:
    """Whether any task waits that no one holds."""
    return bool(_WAITING["fifo"].fetch(conn, {"b_limit": 1}))


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# ---- the lease sweep ------------------------------------------------------------------------


def overdue_jobs(conn: Connection, now: float, limit: int = 500) -> list[AgentJob]:
    """Open jobs whose lease ran out or whose deadline passed."""
    query = (
        select(*_JOB_COLUMNS)
        .where(
            agent_jobs.c.closed.is_(None),
            or_(
                agent_jobs.c.lease_until < now,
                and_(agent_jobs.c.deadline.is_not(None), agent_jobs.c.deadline < now),
            ),
        )
        .limit(limit)
    )
    return [_job(row) for row in conn.execute(query)]


def has_closed_before(conn: Connection, before: float) -> bool:
    query = select(agent_jobs.c.id).where(
        agent_jobs.c.closed.is_not(None), agent_jobs.c.closed < before
    )
    return conn.execute(query.limit(1)).first() is not None


def purge_closed(conn: Connection, before: float) -> int:
    """Forget jobs closed before `before`: their tokens are then unknown (401, not 409)."""
    return conn.execute(
        delete(agent_jobs).where(agent_jobs.c.closed.is_not(None), agent_jobs.c.closed < before)
    ).rowcount


def stale_agents(conn: Connection, seen_before: float) -> list[str]:
    """Agent nodes shown online that have not polled since `seen_before`."""
    query = select(nodes.c.address).where(
        _AGENT,
        nodes.c.online.is_(True),
        or_(nodes.c.last_seen.is_(None), nodes.c.last_seen < seen_before),
    )
    return list(conn.execute(query).scalars())


def mark_offline(conn: Connection, addresses: Sequence[str], seen_before: float, seq: int) -> int:
    """Agent nodes offline, those still unseen since `seen_before`."""
    if not addresses:
        return 0
    return conn.execute(
        update(nodes)
        .where(
            _AGENT,
            nodes.c.address.in_(list(addresses)),
            or_(nodes.c.last_seen.is_(None), nodes.c.last_seen < seen_before),
        )
        .values(online=False, seq=seq)
    ).rowcount


def score(conn: Connection, address: str, seq: int, *, failure: bool) -> None:
    """A failure of the node's own (a lost lease, a task killed from outside) costs it a quota
    step and counts as an infrastructure failure; a success gives a step back."""
    if failure:
        conn.execute(
            update(nodes)
            .where(nodes.c.address == address)
            .values(
                penalty=case(
                    (nodes.c.penalty < MAX_PENALTY, nodes.c.penalty + 1), else_=MAX_PENALTY
                ),
                infra_failures=nodes.c.infra_failures + 1,
                seq=seq,
            )
        )
        return
    conn.execute(
        update(nodes)
        .where(nodes.c.address == address, nodes.c.penalty > 0)
        .values(penalty=nodes.c.penalty - 1, seq=seq)
    )
