"""Attachments in the blob store, and tasks' output in chunks.

`attachments.sha256` names an attachment's blob (see `dirt.blobs`); the `content` column stays
for the rows written before this revision, which keep their contents there and are served from
it as before (nothing is moved, so nothing can be lost in a move). Rows written from now on have
a sha256 and an empty `content`.

`output_chunks` holds what each attempt of a task wrote to stdout and stderr, in the chunks it
arrived in while the task ran: `start` and `stop` are the chunk's offsets in the attempt's whole
output (a jump between chunks is output dropped over [dispatch] output_limit).

Revision ID: 0400_blobs
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0400_blobs"
down_revision = "0300_security"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("attachments", sa.Column("sha256", sa.String(64), nullable=True))
    op.create_index("ix_attachments_sha256", "attachments", ["sha256"])
    op.create_table(
        "output_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(200), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("stop", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_output_chunks_task", "output_chunks", ["task_id", "attempt", "stop"])


def downgrade() -> None:
    op.drop_index("ix_output_chunks_task", table_name="output_chunks")
    op.drop_table("output_chunks")
    op.drop_index("ix_attachments_sha256", table_name="attachments")
    with op.batch_alter_table("attachments") as batch:
        batch.drop_column("sha256")
