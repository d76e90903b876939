"""Per-node SSH options, and a flag asking the dispatcher to kill a running task.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild), so the triggers on `tasks` stay as they are.
    op.add_column("nodes", sa.Column("ssh", sa.JSON, nullable=True))
    op.add_column(
        "tasks",
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("tasks", "cancel_requested")
    op.drop_column("nodes", "ssh")
