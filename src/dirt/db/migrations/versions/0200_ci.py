"""The CI loop: the notification outbox, webhook deliveries seen, watched files, branch outcomes,
and an index of records by their `ref` (the record list filtered by branch).

See dirt/db/ci_schema.py for what each table holds. The ref index is on an expression of the
record's extra fields (`dirt.db.browse.record_ref` builds the same expression in queries, as
the index can serve only a query that names it exactly), with `created` and `id` after it: a
branch's records newest first are one index scan, keyset pages included.

Revision ID: 0200_ci
Revises: 0100_couch
"""

import sqlalchemy as sa
from alembic import op

revision = "0200_ci"
down_revision = "0100_couch"
branch_labels = None
depends_on = None


REF_INDEX = {
    "sqlite": "CREATE INDEX ix_records_ref ON records (json_extract(extra, '$.ref'), created, id)",
    "postgresql": "CREATE INDEX ix_records_ref ON records ((extra ->> 'ref'), created, id)",
}


def upgrade() -> None:
    op.execute(REF_INDEX[op.get_bind().dialect.name])
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("target", sa.String(1000), nullable=False),
        sa.Column("key", sa.String(1000), nullable=True),
        sa.Column("record_id", sa.String(200), nullable=True),
        sa.Column("task_id", sa.String(200), nullable=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("next_try", sa.Float, nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("finished", sa.Float, nullable=True),
    )
    op.create_index("ix_notifications_due", "notifications", ["state", "next_try"])
    op.create_index("ix_notifications_key", "notifications", ["key", "state"])
    op.create_index("ix_notifications_record", "notifications", ["record_id"])
    op.create_table(
        "hook_deliveries",
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("delivery", sa.String(200), nullable=False),
        sa.Column("received", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("source", "delivery", name="pk_hook_deliveries"),
    )
    op.create_index("ix_hook_deliveries_received", "hook_deliveries", ["received"])
    op.create_table(
        "watched_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("folder", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(200), nullable=False),
        sa.Column("seen", sa.Float, nullable=False),
        sa.UniqueConstraint("folder", "path", "sha256", name="uq_watched_files_content"),
    )
    op.create_index("ix_watched_files_path", "watched_files", ["folder", "path"])
    op.create_table(
        "branch_outcomes",
        sa.Column("repository", sa.String(1000), nullable=False),
        sa.Column("ref", sa.String(500), nullable=False),
        sa.Column("record_id", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("finished", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("repository", "ref", name="pk_branch_outcomes"),
    )


def downgrade() -> None:
    op.drop_table("branch_outcomes")
    op.drop_index("ix_watched_files_path", "watched_files")
    op.drop_table("watched_files")
    op.drop_index("ix_hook_deliveries_received", "hook_deliveries")
    op.drop_table("hook_deliveries")
    op.drop_index("ix_notifications_record", "notifications")
    op.drop_index("ix_notifications_key", "notifications")
    op.drop_index("ix_notifications_due", "notifications")
    op.drop_table("notifications")
    op.drop_index("ix_records_ref", "records")
