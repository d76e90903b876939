"""The first schema: records, tasks, attempts, nodes, attachments, the change sequence.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dirt_sequence",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        sa.table("dirt_sequence", sa.column("id"), sa.column("value")), [{"id": 1, "value": 0}]
    )
    op.create_table(
        "records",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_records_created_id", "records", ["created", "id"])
    op.create_index("ix_records_seq", "records", ["seq"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("record_id", sa.String(200), sa.ForeignKey("records.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kwargs", sa.JSON, nullable=True),
        sa.Column("requires", sa.JSON, nullable=False),
        sa.Column("platform", sa.String(32), nullable=True),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("timeout", sa.Float, nullable=True),
        sa.Column("max_attempts", sa.Integer, nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("node", sa.String(300), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("started", sa.Float, nullable=True),
        sa.Column("completed", sa.Float, nullable=True),
        sa.Column("results", sa.JSON, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("waiting_reason", sa.Text, nullable=True),
        sa.Column("module_sha256", sa.String(64), nullable=True),
        sa.Column("output", sa.Text, nullable=True),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_tasks_dispatch", "tasks", ["state", "priority", "created"])
    op.create_index("ix_tasks_record_state", "tasks", ["record_id", "state"])
    op.create_index("ix_tasks_name_created", "tasks", ["name", "created"])
    op.create_index("ix_tasks_seq", "tasks", ["seq"])
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("node", sa.String(300), nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("completed", sa.Float, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.UniqueConstraint("task_id", "number", name="uq_attempts_task_number"),
    )
    op.create_table(
        "nodes",
        sa.Column("address", sa.String(300), primary_key=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("slots_override", sa.Integer, nullable=True),
        sa.Column("sys_info", sa.JSON, nullable=False),
        sa.Column("added", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("load", sa.JSON, nullable=True),
        sa.Column("infra_failures", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_nodes_seq", "nodes", ["seq"])
    op.create_table(
        "attachments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("link_name", sa.Text, nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.UniqueConstraint("task_id", "filename", name="uq_attachments_task_filename"),
    )


def downgrade() -> None:
    for table in ("attachments", "nodes", "attempts", "tasks", "records", "dirt_sequence"):
        op.drop_table(table)
