"""The web's tables: API tokens and task counts kept by triggers, plus indexes for its pages.

`record_states` holds, per record and state, how many of the record's tasks are in that state
(rows with no tasks are deleted), with the record's `created` copied so "records with a failed
task, newest first" is one keyset scan of an index. `state_counts` holds the totals per state
for /metrics. Triggers on `tasks` keep both exact in the same transaction as the write, on
SQLite and PostgreSQL alike, so no writer has to remember them.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER dirt_tasks_counts_insert AFTER INSERT ON tasks
    BEGIN
        INSERT INTO record_states (record_id, state, n, created)
        VALUES (NEW.record_id, NEW.state, 1,
                (SELECT created FROM records WHERE id = NEW.record_id))
        ON CONFLICT (record_id, state) DO UPDATE SET n = n + 1;
        INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER dirt_tasks_counts_update AFTER UPDATE OF state ON tasks
    WHEN OLD.state <> NEW.state
    BEGIN
        UPDATE record_states SET n = n - 1
            WHERE record_id = OLD.record_id AND state = OLD.state;
        DELETE FROM record_states
            WHERE record_id = OLD.record_id AND state = OLD.state AND n <= 0;
        INSERT INTO record_states (record_id, state, n, created)
        VALUES (NEW.record_id, NEW.state, 1,
                (SELECT created FROM records WHERE id = NEW.record_id))
        ON CONFLICT (record_id, state) DO UPDATE SET n = n + 1;
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER dirt_tasks_counts_delete AFTER DELETE ON tasks
    BEGIN
        UPDATE record_states SET n = n - 1
            WHERE record_id = OLD.record_id AND state = OLD.state;
        DELETE FROM record_states
            WHERE record_id = OLD.record_id AND state = OLD.state AND n <= 0;
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    END
    """,
]

POSTGRES_TRIGGERS = [
    """
    CREATE FUNCTION dirt_tasks_counts() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE record_states SET n = n - 1
                WHERE record_id = OLD.record_id AND state = OLD.state;
            DELETE FROM record_states
                WHERE record_id = OLD.record_id AND state = OLD.state AND n <= 0;
            UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO record_states (record_id, state, n, created)
            VALUES (NEW.record_id, NEW.state, 1,
                    (SELECT created FROM records WHERE id = NEW.record_id))
            ON CONFLICT (record_id, state) DO UPDATE SET n = record_states.n + 1;
            INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = state_counts.n + 1;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER dirt_tasks_counts_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION dirt_tasks_counts()
    """,
    """
    CREATE TRIGGER dirt_tasks_counts_update AFTER UPDATE OF state ON tasks
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION dirt_tasks_counts()
    """,
    """
    CREATE TRIGGER dirt_tasks_counts_delete AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION dirt_tasks_counts()
    """,
]


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_sha256"),
    )
    op.create_table(
        "record_states",
        sa.Column("record_id", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("record_id", "state", name="pk_record_states"),
    )
    op.create_index(
        "ix_record_states_state_created", "record_states", ["state", "created", "record_id"]
    )
    op.create_table(
        "state_counts",
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    # The task history's keyset and the duration summary of /metrics.
    op.create_index("ix_tasks_name_created_id", "tasks", ["name", "created", "id"])
    op.create_index("ix_tasks_completed", "tasks", ["completed"])
    # Stores made before this revision: count what is there.
    op.execute(
        "INSERT INTO record_states (record_id, state, n, created) "
        "SELECT t.record_id, t.state, COUNT(*), r.created FROM tasks t "
        "JOIN records r ON r.id = t.record_id GROUP BY t.record_id, t.state, r.created"
    )
    op.execute(
        "INSERT INTO state_counts (state, n) SELECT state, COUNT(*) FROM tasks GROUP BY state"
    )
    dialect = op.get_bind().dialect.name
    for statement in POSTGRES_TRIGGERS if dialect == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name in ("insert", "update", "delete"):
        on = " ON tasks" if postgres else ""
        op.execute(f"DROP TRIGGER IF EXISTS dirt_tasks_counts_{name}{on}")
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS dirt_tasks_counts()")
    op.drop_index("ix_tasks_completed", "tasks")
    op.drop_index("ix_tasks_name_created_id", "tasks")
    for table in ("state_counts", "record_states", "api_tokens"):
        op.drop_table(table)
