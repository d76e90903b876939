"""Plain data objects passed between the store, the service and the interfaces; no I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TaskState(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class Outcome(StrEnum):
    """How one attempt ended: the final state its task took, or lost (its node went away and
    the task went back to waiting)."""

    SUCCEEDED = TaskState.SUCCEEDED.value
    FAILED = TaskState.FAILED.value
    CANCELLED = TaskState.CANCELLED.value
    LOST = "lost"


MAX_SHARE = 1000  # the largest `share` a record may ask for


class TokenScope(StrEnum):
    """What an API token may do; stored with the token."""

    READ = "read"  # read everything a page or the API shows, where reads need a token
    API = "api"  # read, and write: submit, cancel, retry, change nodes
    AGENT = "agent"  # register pull-mode agents and run their jobs; nothing else

    @property
    def may_write(self) -> bool:
        return self is TokenScope.API

    @property
    def may_read(self) -> bool:
        """An agent's token reads nothing: it may only take jobs and report on them."""
        return self is not TokenScope.AGENT


class NodeKind(StrEnum):
    """How the master reaches a node: over SSH (or a local process) through the dispatcher, or
    not at all: an agent node fetches its work over HTTP (dirt.web.agent_api)."""

    SSH = "ssh"
    LOCAL = "local"
    AGENT = "agent"
    SLURM = "slurm"  # a batch system's partition: each task runs as one job (dirt.batch)


@dataclass(frozen=True)
class Actor:
    """Who made a write, as the audit keeps it: a token by name (via "token", "cookie" or
    "basic"), a user on this machine (via "loopback" for the web, "local" for the CLI and any
    other process on the store), or "anonymous" where writes need no token."""

    name: str
    via: str
    client: str | None = None  # the client's address, for writes over HTTP
    request: str | None = None  # "POST /api/records", for writes over HTTP


@dataclass
class AuditEntry:
    id: int
    at: float
    seq: int
    actor: str
    via: str
    client: str | None
    action: str
    target: str
    request: str | None

    def to_doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "seq": self.seq,
            "actor": self.actor,
            "via": self.via,
            "client": self.client,
            "action": self.action,
            "target": self.target,
            "request": self.request,
        }


@dataclass
class Record:
    id: str
    description: str = ""
    created: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    @property
    def share(self) -> int:
        """Turns the record takes per round under fair order: its `share` field, default 1.

        Kept in `extra` (so the document round-trips as it came); checked on submission
        (dirt.documents), and read defensively here for records stored before that check.
        """
        value = self.extra.get("share", 1)
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SHARE:
            return value
        return 1

    def to_doc(self) -> dict[str, Any]:
        """The record in the original's document format, extra fields as they came."""
        return {
            **self.extra,
            "_id": self.id,
            "type": "record",
            "description": self.description,
            "created": self.created,
        }


@dataclass
class Task:
    id: str
    record_id: str
    name: str
    kwargs: dict[str, Any] | None = None
    requires: list[str] = field(default_factory=list)
    platform: str | None = None
    priority: int = 0
    timeout: float | None = None
    max_attempts: int | None = None
    created: float = 0.0
    state: TaskState = TaskState.WAITING
    node: str | None = None
    attempts: int = 0
    started: float | None = None
    completed: float | None = None
    results: dict[str, Any] | None = None
    reason: str | None = None
    waiting_reason: str | None = None
    module_sha256: str | None = None
    output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    seq: int = 0
    # Its place under fair order (see dirt.dispatch.order): the round its record takes it in,
    # and the record's `created`, which orders the records within a round.
    turn: int = 0
    record_created: float = 0.0

    @property
    def duration(self) -> float | None:
        if self.started is None or self.completed is None:
            return None
        return self.completed - self.started

    def to_doc(self) -> dict[str, Any]:
        """The task in the original's document format plus dirt's state fields."""
        doc: dict[str, Any] = {
            **self.extra,
            "_id": self.id,
            "type": "task",
            "record_id": self.record_id,
            "name": self.name,
            "created": self.created,
            "state": self.state.value,
            "attempts": self.attempts,
            "priority": self.priority,
        }
        optional = {
            "kwargs": self.kwargs,
            "requires": self.requires or None,
            "platform": self.platform,
            "timeout": self.timeout,
            "max_attempts": self.max_attempts,
            "node": self.node,
            "started": self.started,
            "completed": self.completed,
            "results": self.results,
            "reason": self.reason,
            "waiting_reason": self.waiting_reason,
            "module_sha256": self.module_sha256,
        }
        doc.update({k: v for k, v in optional.items() if v is not None})
        return doc


@dataclass
class Attempt:
    task_id: str
    number: int
    node: str
    started: float
    completed: float | None = None
    outcome: Outcome | None = None  # None while the attempt runs
    reason: str | None = None


@dataclass
class Node:
    address: str
    enabled: bool = True
    online: bool = False
    slots: int = 1
    slots_override: int | None = None
    sys_info: dict[str, Any] = field(default_factory=dict)
    added: float = 0.0
    last_seen: float | None = None
    last_error: str | None = None
    load: list[float] | None = None
    infra_failures: int = 0
    ssh: dict[str, Any] = field(default_factory=dict)  # per-node options; see dispatch/runner
    seq: int = 0
    driver: str | None = None  # the dispatcher that drives the node (its lease), if any
    driver_since: float | None = None
    kind: NodeKind = NodeKind.SSH
    # An agent node's recent infrastructure failures (lost leases, tasks killed from outside):
    # each halves the slots it may fill. Kept in the store: an agent's requests may reach any
    # web process. (The dispatcher keeps its nodes' in memory.)
    penalty: int = 0

    @property
    def capacity(self) -> int:
        """Slots filled at once: halved per recent infrastructure failure, at least 1."""
        return max(1, self.slots >> max(0, self.penalty))

    def to_doc(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "kind": self.kind.value,
            "enabled": self.enabled,
            "online": self.online,
            "slots": self.slots,
            "hostname": self.sys_info.get("hostname"),
            "platform": self.sys_info.get("platform"),
            "architecture": self.sys_info.get("architecture"),
            "cpu_count": self.sys_info.get("cpu_count"),
            "added": self.added,
            "last_seen": self.last_seen,
            "last_error": self.last_error,
            "load": self.load,
            "infra_failures": self.infra_failures,
            "ssh": self.ssh,
            "sys_info": self.sys_info,
            "driver": self.driver,
            "driver_since": self.driver_since,
        }


@dataclass
class Dispatcher:
    """A running dispatcher (master) as the store knows it: its lease and what it holds.

    Times are the store's clock. `live` is False once `lease_until` passed: the dispatcher is
    dead, or cut off from the store, and a live one takes over its tasks and nodes.
    """

    id: str
    host: str
    pid: int
    machine: str | None
    started: float
    heartbeat: float
    lease_until: float
    state: str  # running, or draining (stopping: it takes no new tasks)
    running: int = 0
    nodes: list[str] = field(default_factory=list)
    live: bool = True

    def to_doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "heartbeat": self.heartbeat,
            "lease_until": self.lease_until,
            "state": self.state,
            "live": self.live,
            "running": self.running,
            "nodes": list(self.nodes),
        }


@dataclass
class Attachment:
    """A file a task attached. Its contents are in the blob store under `sha256`; `content`
    holds them only on their way there, or for rows stored before the blob store existed."""

    task_id: str
    filename: str
    link_name: str
    content_type: str
    size: int
    content: bytes | None = None
    created: float = 0.0
    sha256: str | None = None


@dataclass
class AgentJob:
    """One attempt of a task handed to a pull-mode agent: who holds it (`claim`, the task's
    claimed_by), until when its lease runs (`lease_until`, renewed by the agent's heartbeats),
    when the master gives up on it whatever the agent says (`deadline`: the task's timeout
    plus a lease), and how it ended (`closed`, `end`)."""

    id: int
    task_id: str
    attempt: int
    node: str
    claim: str
    started: float
    lease_until: float
    deadline: float | None = None
    timeout: float | None = None
    module_sha256: str = ""
    closed: float | None = None
    end: str | None = None  # how it closed: see dirt.db.agents.ENDS
    agent_digest: str = ""  # sha256 of the agent token that took it
    token_valid: bool = True
    # Of its task, when read with it (dirt.db.agents.job_by_token):
    task_name: str = ""
    task_state: TaskState | None = None
    cancel_requested: bool = False  # the agent token that claimed it still exists


@dataclass
class OutputChunk:
    """Bytes one attempt of a task wrote to stdout or stderr, from `start` in its output."""

    task_id: str
    attempt: int
    start: int
    data: bytes

    @property
    def stop(self) -> int:
        return self.start + len(self.data)


@dataclass
class Finished:
    """What a dispatcher learned about one run of a task, ready to store."""

    task_id: str
    attempt: int
    node: str
    state: TaskState
    results: dict[str, Any] | None
    reason: str | None
    module_sha256: str | None
    output: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    completed: float = field(default_factory=time.time)
    # Set when the run's start was never written: start and finish are stored together.
    started: float | None = None


@dataclass
class NodeRuntime:
    """What a dispatcher knows of a node it drives, beyond the store's row."""

    online: bool  # connected, or connecting for the first time
    accepting: bool  # False while the load balancer holds tasks back
    capacity: int  # slots it fills (fewer after infrastructure failures)
    running: int


@dataclass
class DispatcherInfo:
    """A dispatcher as it announces itself in the store (one row each; see db.queue).

    `heads[address][priority]` is the lowest turn among the tasks the dispatcher holds or will
    reserve next that the node can run: where that node's queue stands, which is where a new
    record's tasks join it (dirt.dispatch.order.allocate_turns).
    """

    id: str
    host: str
    pid: int
    started: float
    last_seen: float
    stopped: float | None = None
    order: str = "fair"
    nodes: dict[str, NodeRuntime] = field(default_factory=dict)
    heads: dict[str, dict[int, int]] = field(default_factory=dict)

    def alive(self, now: float, stale_after: float) -> bool:
        return self.stopped is None and now - self.last_seen < stale_after


@dataclass
class RecordSummary:
    """A record with its task counts per state, as the overview shows it."""

    record: Record
    counts: dict[str, int]

    @property
    def ntasks(self) -> int:
        return sum(self.counts.values())
