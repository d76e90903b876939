"""Token scopes and the audit of writes.

`api_tokens.scope`: what a token may do ("read" or "api"); tokens made before are "api", as
they could write. `audit`: who made each user write (a token by name, a user on this machine),
what it was and when, written in the transaction of the change.

Revision ID: 0300_security
Revises: 0100_couch
"""

import sqlalchemy as sa
from alembic import op

revision = "0300_security"
down_revision = "0500_fair"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "api_tokens",
        sa.Column("scope", sa.String(16), nullable=False, server_default="api"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("client", sa.String(100), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("request", sa.Text, nullable=True),
    )
    op.create_index("ix_audit_at", "audit", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_at", "audit")
    op.drop_table("audit")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("scope")
