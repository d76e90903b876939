"""Every table of the store, as SQLAlchemy Core. Migrations under migrations/ build these."""

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
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
)

from dirt.models import TaskState

metadata = MetaData()

# One row: the change sequence. Every write transaction takes its next value and stamps it on
# the rows it writes, so a reader asks "what changed since N" with an indexed range query.
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
    Index("ix_nodes_seq", "seq"),
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
    Column("content", LargeBinary, nullable=False),
    Column("created", Float, nullable=False),
    UniqueConstraint("task_id", "filename", name="uq_attachments_task_filename"),
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
# The dispatcher's order (db.tasks.waiting_tasks, dispatch.select.reservation_key).
Index("ix_tasks_waiting", tasks.c.state, tasks.c.priority.desc(), tasks.c.created, tasks.c.id)
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
ACTIVE_CLAIM = and_(
    tasks.c.claimed_by.is_not(None),
    tasks.c.state.in_([TaskState.WAITING.value, TaskState.RUNNING.value]),
)
Index(
    "ix_tasks_claims",
    tasks.c.claimed_by,
    postgresql_where=ACTIVE_CLAIM,
    sqlite_where=ACTIVE_CLAIM,
)
