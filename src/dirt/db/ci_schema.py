"""The CI loop's tables (migration 0200_ci): the notification outbox, webhook deliveries seen,
files a watched folder gave, and the last outcome per branch.

Kept apart from schema.py while the core is being split (issue 12); they are on the same
`metadata`, so the store sees one schema.
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from dirt.db.schema import metadata

# One row per message to send. Written in the transaction of the change that caused it; sent by
# `dirt.notify.sender` with retries. state: pending -> sending (claimed by one sender until
# `claimed_until`) -> sent | failed, or pending again with a later `next_try`; a row whose
# `key` a newer row shares is superseded while it waits (a newer commit status replaces it).
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(40), nullable=False),  # task.created, task.finished, record.finished...
    Column("channel", String(20), nullable=False),  # email, github, gitlab, webhook
    Column("target", String(1000), nullable=False, default=""),  # a webhook's URL, else ""
    Column("key", String(1000), nullable=True),  # rows with one key are sent in order
    Column("record_id", String(200), nullable=True),
    Column("task_id", String(200), nullable=True),
    Column("payload", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created", Float, nullable=False),
    Column("next_try", Float, nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("finished", Float, nullable=True),
    Index("ix_notifications_due", "state", "next_try"),
    Index("ix_notifications_key", "key", "state"),
    Index("ix_notifications_record", "record_id"),
)

# Forge delivery ids already taken: a replayed webhook makes nothing.
hook_deliveries = Table(
    "hook_deliveries",
    metadata,
    Column("source", String(20), nullable=False),
    Column("delivery", String(200), nullable=False),
    Column("received", Float, nullable=False),
    PrimaryKeyConstraint("source", "delivery", name="pk_hook_deliveries"),
    Index("ix_hook_deliveries_received", "received"),
)

# Files `dirt watch` made records of: never twice for the same file, across restarts.
watched_files = Table(
    "watched_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("folder", Text, nullable=False),
    Column("path", Text, nullable=False),  # relative to the folder
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("record_id", String(200), nullable=False),
    Column("seen", Float, nullable=False),
    UniqueConstraint("folder", "path", "sha256", name="uq_watched_files_content"),
    Index("ix_watched_files_path", "folder", "path"),
)

# The outcome of the last record that finished per branch, for `[notify.email] when`.
branch_outcomes = Table(
    "branch_outcomes",
    metadata,
    Column("repository", String(1000), nullable=False),
    Column("ref", String(500), nullable=False),
    Column("record_id", String(200), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("finished", Float, nullable=False),
    PrimaryKeyConstraint("repository", "ref", name="pk_branch_outcomes"),
)
