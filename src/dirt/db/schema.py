"""Every table of the store, as SQLAlchemy Core. Migrations under migrations/ build these."""

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    literal_column,
    text,
)

metadata = MetaData()

# Row 1: the change sequence. Every write transaction takes its next value and stamps it on
# the rows it writes, so a reader asks "what changed since N" with an indexed range query.
# Rows 2 and 3: the value of the last write that woke dispatchers for tasks, for nodes
# (dirt.db.notify.TOPIC_ROWS).
sequence = Table(
    "dirt_sequence",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

records = Table(
    "records",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("description", Text, nullable=False, default=""),
    Column("created", Float, nullable=False),
    Column("extra", JSON, nullable=False),
    Column("seq", BigInteger, nullable=False),
    # Bumped by a trigger on every update (migration 0100_couch): the CouchDB `_rev` generation.
    Column("revision", Integer, nullable=False, server_default="1"),
    Index("ix_records_created_id", "created", "id"),
    # (seq, id): the change feed's keyset order (migration 0100_couch; "C" collation on PostgreSQL)
    Index("ix_records_seq_id", "seq", "id"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("record_id", String(200), ForeignKey("records.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kwargs", JSON, nullable=True),
    Column("requires", JSON, nullable=False),
    Column("platform", String(32), nullable=True),
    Column("priority", Integer, nullable=False, default=0),
    Column("timeout", Float, nullable=True),
    Column("max_attempts", Integer, nullable=True),
    Column("created", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("node", String(300), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("started", Float, nullable=True),
    Column("completed", Float, nullable=True),
    Column("results", JSON, nullable=True),
    Column("reason", Text, nullable=True),
    Column("waiting_reason", Text, nullable=True),
    Column("module_sha256", String(64), nullable=True),
    Column("output", Text, nullable=True),
    Column("extra", JSON, nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("seq", BigInteger, nullable=False),
    # Set by `dirt cancel` on a running task: its dispatcher kills it and stores "cancelled".
    Column("cancel_requested", Boolean, nullable=False, default=False),
    # Bumped by a trigger on every update (migration 0100_couch): the CouchDB `_rev` generation.
    Column("revision", Integer, nullable=False, server_default="1"),
    # Fair order (migration 0500_fair, dirt.dispatch.order): the round the task's record takes
    # it in, and the record's `created`, which orders records within a round.
    Column("turn", BigInteger, nullable=False, default=0),
    Column("record_created", Float, nullable=False, default=0.0),
    Index("ix_tasks_record_state", "record_id", "state"),
    Index("ix_tasks_name_created", "name", "created"),
    Index("ix_tasks_seq_id", "seq", "id"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(200), ForeignKey("tasks.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("node", String(300), nullable=False),
    Column("started", Float, nullable=False),
    Column("completed", Float, nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("reason", Text, nullable=True),
    UniqueConstraint("task_id", "number", name="uq_attempts_task_number"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("address", String(300), primary_key=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("slots", Integer, nullable=False),
    Column("slots_override", Integer, nullable=True),
    Column("sys_info", JSON, nullable=False),
    Column("added", Float, nullable=False),
    Column("last_seen", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("load", JSON, nullable=True),
    Column("infra_failures", Integer, nullable=False, default=0),
    Column("seq", BigInteger, nullable=False),
    # How to reach the node: {"user", "port", "identity_file", "ssh_config", "python",
    # "host_key_checking"}, each optional; dirt.toml's [nodes] gives the rest.
    Column("ssh", JSON, nullable=True),
    # The node's lease (migration 0600): the dispatcher that drives it, valid while that
    # dispatcher's own lease is (see `dispatchers`); null when no dispatcher drives it.
    Column("driver", String(64), nullable=True),
    Column("driver_since", Float, nullable=True),
    # dirt.models.NodeKind (migration 0700_agents): "agent" nodes are never connected to, they
    # fetch their work over HTTP; `penalty` is such a node's flaky-host score.
    Column("kind", String(16), nullable=False, server_default="ssh"),
    Column("penalty", Integer, nullable=False, server_default="0"),
    Index("ix_nodes_seq", "seq"),
)

# ---- pull-mode agents (migration 0700_agents) -----------------------------------------------

# One row per attempt handed to an agent: the task's claim (its claimed_by while it runs), the
# sha256 of its job token (the token itself is never stored) and of the agent token that took
# it (revoking that token voids its jobs), its lease (renewed by heartbeats; once it runs out,
# any web process closes the job as lost, in one conditional UPDATE), and how it ended.
agent_jobs = Table(
    "agent_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(200), ForeignKey("tasks.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("node", String(300), nullable=False),
    Column("claim", String(64), nullable=False),
    Column("token_sha256", String(64), nullable=False),
    Column("agent_token_sha256", String(64), nullable=False),
    Column("started", Float, nullable=False),
    Column("lease_until", Float, nullable=False),
    Column("deadline", Float, nullable=True),
    Column("timeout", Float, nullable=True),
    Column("module_sha256", String(64), nullable=False),
    Column("closed", Float, nullable=True),
    Column("outcome", String(16), nullable=True),
    UniqueConstraint("token_sha256", name="uq_agent_jobs_token"),
    UniqueConstraint("task_id", "attempt", name="uq_agent_jobs_task_attempt"),
    Index("ix_agent_jobs_open", "closed", "lease_until"),
    Index("ix_agent_jobs_node", "node", "closed"),
)

# ---- batch systems as nodes (migration 0800_batch) -------------------------------------------

# A batch node's settings (its `nodes` row has kind "slurm"; slots = max_jobs): the partition,
# the login host the commands run on over SSH (None: here), sbatch's extra options as parsed
# words, and the folder jobs write their output to (shared with the compute hosts).
batch_nodes = Table(
    "batch_nodes",
    metadata,
    Column("address", String(300), primary_key=True),
    Column("system", String(16), nullable=False),
    Column("partition", String(200), nullable=False),
    Column("login_host", String(300), nullable=True),
    Column("submit_args", JSON, nullable=False),
    Column("max_jobs", Integer, nullable=False),
    Column("workdir", Text, nullable=False),
)

# One row per attempt run as a batch job: the task's claim (its claimed_by from submission to
# the job's end: reserved, so still waiting, while Slurm queues it; running once its agent
# starts), the sha256 of its one-use job token, the Slurm job's name and id, its phase
# (dirt.batch.jobs.Phase), Slurm's last word on it ("PENDING: Priority"), the compute host, the
# agent job its agent opened, and how it ended (`closed`, `outcome`).
batch_jobs = Table(
    "batch_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(200), ForeignKey("tasks.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("node", String(300), nullable=False),
    Column("claim", String(64), nullable=False),
    Column("token_sha256", String(64), nullable=False),
    Column("job_name", String(200), nullable=False),
    Column("job_id", String(64), nullable=True),
    Column("phase", String(16), nullable=False),
    Column("slurm_state", Text, nullable=True),
    Column("compute_host", String(300), nullable=True),
    Column("agent_job_id", Integer, nullable=True),
    Column("submitted", Float, nullable=False),
    Column("started", Float, nullable=True),
    Column("closed", Float, nullable=True),
    Column("outcome", Text, nullable=True),
    UniqueConstraint("token_sha256", name="uq_batch_jobs_token"),
    UniqueConstraint("task_id", "attempt", name="uq_batch_jobs_task_attempt"),
    Index("ix_batch_jobs_node", "node", "closed"),
)

attachments = Table(
    "attachments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(200), ForeignKey("tasks.id"), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("link_name", Text, nullable=False),
    Column("content_type", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    # Empty when `sha256` names the blob holding the contents (see dirt.blobs); rows written
    # before migration 0400_blobs keep their contents here.
    Column("content", LargeBinary, nullable=False),
    Column("created", Float, nullable=False),
    Column("sha256", String(64), nullable=True),
    UniqueConstraint("task_id", "filename", name="uq_attachments_task_filename"),
    Index("ix_attachments_sha256", "sha256"),
)

# ---- task output (migration 0400_blobs) -----------------------------------------------------

# What each attempt of a task wrote to stdout and stderr, in the chunks it arrived in while the
# task ran. `start` and `stop` are offsets in the attempt's whole output: a jump from one chunk's
# stop to the next one's start is output dropped over [dispatch] output_limit.
output_chunks = Table(
    "output_chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(200), ForeignKey("tasks.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("start", BigInteger, nullable=False),
    Column("stop", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index("ix_output_chunks_task", "task_id", "attempt", "stop"),
)

# ---- the web (migration 0002) --------------------------------------------------------------

# API tokens: only the sha256 of each token is kept; the token is shown once, when made.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("token_sha256", String(64), nullable=False),
    Column("created", Float, nullable=False),
    # What the token may do (dirt.models.TokenScope); migration 0300 made earlier tokens "api".
    Column("scope", String(16), nullable=False, server_default="api"),
    UniqueConstraint("name", name="uq_api_tokens_name"),
    UniqueConstraint("token_sha256", name="uq_api_tokens_sha256"),
)

# Kept by triggers on `tasks` (see migration 0002): per record and state, how many tasks (rows
# at zero are deleted), with the record's `created` so a state filter is one index scan.
record_states = Table(
    "record_states",
    metadata,
    Column("record_id", String(200), primary_key=True),
    Column("state", String(16), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("created", Float, nullable=False),
    Index("ix_record_states_state_created", "state", "created", "record_id"),
)

# Kept by the same triggers: the number of tasks in each state, for /metrics.
state_counts = Table(
    "state_counts",
    metadata,
    Column("state", String(16), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

Index("ix_tasks_name_created_id", tasks.c.name, tasks.c.created, tasks.c.id)
# The dispatcher's orders over waiting tasks, highest priority first (db.tasks.waiting_query;
# dispatch.select.key_of is the same in Python): fifo (oldest first) and fair (records take
# turns: see dispatch.order). Each has its index: fair's holds waiting tasks only (partial), so
# a task leaves it when it starts.
ORDERS = {
    "fifo": (tasks.c.priority.desc(), tasks.c.created, tasks.c.id),
    "fair": (
        tasks.c.priority.desc(),
        tasks.c.turn,
        tasks.c.record_created,
        tasks.c.record_id,
        tasks.c.created,
        tasks.c.id,
    ),
}
Index("ix_tasks_waiting", tasks.c.state, *ORDERS["fifo"])
WAITING_ONLY = text("state = 'waiting'")
Index(
    "ix_tasks_fair",
    *ORDERS["fair"],
    sqlite_where=WAITING_ONLY,
    postgresql_where=WAITING_ONLY,
)
Index("ix_tasks_completed", tasks.c.completed)

# ---- the CouchDB interface (migration 0100_couch) ------------------------------------------

# One row: this store's CouchDB server uuid (part of every `_rev`, so two stores never share
# revision ids) and the number of records, kept by triggers on `records`.
couch_server = Table(
    "couch_server",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", String(32), nullable=False),
    Column("record_count", BigInteger, nullable=False),
)

# CouchDB's `_local/{id}` documents (replication checkpoints): never in `_changes`.
couch_local_docs = Table(
    "couch_local_docs",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("revision", Integer, nullable=False),
    Column("body", JSON, nullable=False),
    Column("updated", Float, nullable=False),
)

# ---- fair order and dispatchers (migration 0500_fair) ------------------------------------------

# Per record and priority, the next slot of its turn sequence: a record with share s takes s
# slots per round, so slot n is in round n // s (dirt.dispatch.order.allocate_turns).
record_turns = Table(
    "record_turns",
    metadata,
    Column("record_id", String(200), primary_key=True),
    Column("priority", Integer, primary_key=True),
    Column("next_slot", BigInteger, nullable=False),
)

# One row per dispatcher that ran on this store: its heartbeat (`last_seen`, written at least
# every few seconds while it runs), `stopped` once it stopped cleanly, its order, and `view`:
# the nodes it drives as it sees them and where each node's queue stands (models.DispatcherInfo).
# Readers combine these with the store to say why a task waits; a dispatcher not seen for a while
# is not running. (Leases between several masters are `dispatchers`, migration 0600_masters:
# those rows go when a dispatcher stops or is taken over, these stay a day to say since when
# none runs.)
dispatcher_views = Table(
    "dispatcher_views",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("stopped", Float, nullable=True),
    Column("dispatch_order", String(16), nullable=False),
    Column("view", JSON, nullable=False),
)

# ---- security (migration 0300) -------------------------------------------------------------

# Who changed what: one row per user write (web or CLI; not the dispatcher's own steps), written
# in the transaction of the change itself, so a change and its row commit or roll back together.
audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("via", String(16), nullable=False),
    Column("client", String(100), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("request", Text, nullable=True),
    Index("ix_audit_at", "at"),
)

# ---- several masters (migration 0600_masters) ----------------------------------------------

# One row per running dispatcher, renewed every few seconds ([dispatch] lease): a dispatcher
# whose lease ran out is dead, and a live one takes over what it held (its claims on tasks, its
# nodes). Times are the store's clock, so masters on machines with skewed clocks agree.
dispatchers = Table(
    "dispatchers",
    metadata,
    Column("id", String(64), primary_key=True),  # the master id its claims carry
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    # Boot id and pid namespace: where `pid` names this process (same machine, same namespace),
    # so a dead pid there proves the dispatcher dead before its lease runs out.
    Column("machine", String(128), nullable=True),
    Column("started", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),
    Column("lease_until", Float, nullable=False),
    Column("state", String(16), nullable=False),  # running, or draining (stopping)
)

# Claims still in force (reserved or running tasks), found without reading every waiting task:
# a takeover and the sweep for claims of gone dispatchers read only these.
# The states are literals, as in the index, so that the planner may use it: SQLite (and a
# PostgreSQL generic plan) cannot match a partial index's condition to bound parameters.
ACTIVE_CLAIM = and_(
    tasks.c.claimed_by.is_not(None),
    tasks.c.state.in_([literal_column("'waiting'"), literal_column("'running'")]),
)
Index(
    "ix_tasks_claims",
    tasks.c.claimed_by,
    postgresql_where=ACTIVE_CLAIM,
    sqlite_where=ACTIVE_CLAIM,
)


def through_claims(query: Select[Any]) -> Select[Any]:
    """`query` over tasks WHERE ACTIVE_CLAIM, read through ix_tasks_claims: SQLite's planner,
    without statistics, takes the waiting order's index and reads every waiting task."""
    return query.with_hint(tasks, "INDEXED BY ix_tasks_claims", dialect_name="sqlite")
