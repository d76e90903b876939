"""Pull-mode agents: node kinds, an agent node's flaky-host score, and agent jobs.

`nodes.kind` says how the master reaches a node ("ssh", "local", or "agent": never, the agent
fetches its work over HTTP); nodes added before are "ssh", the one named local "local".
`nodes.penalty` is an agent node's flaky-host score (the dispatcher keeps its own nodes' in
memory). `agent_jobs` holds one row per attempt handed to an agent: its claim, the sha256 of its
job token and of the agent token that took it, its lease and how it ended.

Revision ID: 0700_agents
Revises: 0600_masters
"""

import sqlalchemy as sa
from alembic import op

revision = "0700_agents"
down_revision = "0600_masters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("kind", sa.String(16), nullable=False, server_default="ssh"))
    op.add_column("nodes", sa.Column("penalty", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE nodes SET kind = 'local' WHERE address = 'local'")
    op.create_table(
        "agent_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("node", sa.String(300), nullable=False),
        sa.Column("claim", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("agent_token_sha256", sa.String(64), nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=True),
        sa.Column("timeout", sa.Float, nullable=True),
        sa.Column("module_sha256", sa.String(64), nullable=False),
        sa.Column("closed", sa.Float, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.UniqueConstraint("token_sha256", name="uq_agent_jobs_token"),
        sa.UniqueConstraint("task_id", "attempt", name="uq_agent_jobs_task_attempt"),
    )
    op.create_index("ix_agent_jobs_open", "agent_jobs", ["closed", "lease_until"])
    op.create_index("ix_agent_jobs_node", "agent_jobs", ["node", "closed"])


def downgrade() -> None:
    op.drop_index("ix_agent_jobs_node", table_name="agent_jobs")
    op.drop_index("ix_agent_jobs_open", table_name="agent_jobs")
    op.drop_table("agent_jobs")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("penalty")
        batch.drop_column("kind")
