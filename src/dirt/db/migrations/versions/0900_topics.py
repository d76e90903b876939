"""Topics of the change sequence: rows 2 (tasks) and 3 (nodes) of `dirt_sequence` hold the
sequence value of the last write that woke dispatchers for tasks, or for nodes (see
dirt.db.notify): a reader that polls tells a submission or a node change from a write no one
waits for (a busy agent's progress). Both start at the sequence's value.

Revision ID: 0900_topics
Revises: 0800_batch
"""

from alembic import op

revision = "0900_topics"
down_revision = "0800_batch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for row in (2, 3):
        op.execute(
            f"INSERT INTO dirt_sequence (id, value) "
            f"SELECT {row}, value FROM dirt_sequence WHERE id = 1"
        )


def downgrade() -> None:
    op.execute("DELETE FROM dirt_sequence WHERE id IN (2, 3)")
