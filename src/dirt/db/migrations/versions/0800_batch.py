"""Batch systems as nodes (Slurm): each batch node's settings, and one row per attempt handed
to the batch system as a job.

`batch_nodes` holds what `dirt nodes add slurm:PARTITION[@LOGIN_HOST]` was given (the node's
row in `nodes` has kind "slurm", its slots are --max-jobs, its sys_info the partition's).
`batch_jobs` is one attempt of a task run as one batch job: its claim (the task's claimed_by
from submission to its end), the sha256 of its one-use job token, its Slurm job name and id,
the compute host that ran it, Slurm's last word on it, and how it ended.

Revision ID: 0800_batch
Revises: 0700_agents
"""

import sqlalchemy as sa
from alembic import op

revision = "0800_batch"
down_revision = "0700_agents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_nodes",
        sa.Column("address", sa.String(300), primary_key=True),
        sa.Column("system", sa.String(16), nullable=False),
        sa.Column("partition", sa.String(200), nullable=False),
        sa.Column("login_host", sa.String(300), nullable=True),
        sa.Column("submit_args", sa.JSON, nullable=False),
        sa.Column("max_jobs", sa.Integer, nullable=False),
        sa.Column("workdir", sa.Text, nullable=False),
    )
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("node", sa.String(300), nullable=False),
        sa.Column("claim", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("slurm_state", sa.Text, nullable=True),
        sa.Column("compute_host", sa.String(300), nullable=True),
        sa.Column("agent_job_id", sa.Integer, nullable=True),
        sa.Column("submitted", sa.Float, nullable=False),
        sa.Column("started", sa.Float, nullable=True),
        sa.Column("closed", sa.Float, nullable=True),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.UniqueConstraint("token_sha256", name="uq_batch_jobs_token"),
        sa.UniqueConstraint("task_id", "attempt", name="uq_batch_jobs_task_attempt"),
    )
    op.create_index("ix_batch_jobs_node", "batch_jobs", ["node", "closed"])


def downgrade() -> None:
    op.drop_index("ix_batch_jobs_node", table_name="batch_jobs")
    op.drop_table("batch_jobs")
    op.drop_table("batch_nodes")
