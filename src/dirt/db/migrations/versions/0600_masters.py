"""Several masters: a row per running dispatcher with its lease, the node's lease (the
dispatcher driving it), and an index over the claims still in force.

Revision ID: 0600_masters
Revises: 0400_blobs
"""

import sqlalchemy as sa
from alembic import op

revision = "0600_masters"
down_revision = "0400_blobs"
branch_labels = None
depends_on = None

ACTIVE_CLAIM = "claimed_by IS NOT NULL AND state IN ('waiting', 'running')"


def upgrade() -> None:
    op.create_table(
        "dispatchers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("machine", sa.String(128), nullable=True),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("heartbeat", sa.Float, nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    # Plain ADD COLUMN (no table rebuild), as in 0003.
    op.add_column("nodes", sa.Column("driver", sa.String(64), nullable=True))
    op.add_column("nodes", sa.Column("driver_since", sa.Float, nullable=True))
    op.create_index(
        "ix_tasks_claims",
        "tasks",
        ["claimed_by"],
        postgresql_where=sa.text(ACTIVE_CLAIM),
        sqlite_where=sa.text(ACTIVE_CLAIM),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_claims", table_name="tasks")
    op.drop_column("nodes", "driver_since")
    op.drop_column("nodes", "driver")
    op.drop_table("dispatchers")
