"""The CouchDB interface: document revisions, the server's uuid and record count, `_local` docs.

`records.revision` and `tasks.revision` count the writes to each row: a trigger adds one on every
UPDATE (the statement's own value wins when it sets the column), so no writer has to remember
it and the dispatcher's statements stay as they are. A document's CouchDB `_rev` is
`{revision}-{hash(uuid, id, revision)}`: every ancestor's id can be computed, so a replica's
revision tree stays one branch (no spurious conflicts) however often a task changes.

`couch_server` holds the store's CouchDB server uuid (made here, at random) and the number of
records, kept by triggers, so the database info and `_all_docs` count without a scan (tasks are
counted by `state_counts`). On PostgreSQL, `_all_docs` pages through ids in code-point order
(CouchDB's raw collation) with indexes in the "C" collation; SQLite compares ids that way.

The change feed pages in (seq, id) order, so the indexes on `seq` become (seq, id): a page inside
one big transaction (a 100,000-task submission) is an index range, not a sort of the whole
transaction's rows. They replace the `seq` indexes, so a write maintains no more indexes.

Revision ID: 0100_couch
Revises: 0005
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0100_couch"
down_revision = "0005"
branch_labels = None
depends_on = None

SQLITE_TRIGGERS = [
    *(
        f"""
        CREATE TRIGGER dirt_{table}_revision AFTER UPDATE ON {table}
        WHEN NEW.revision = OLD.revision
        BEGIN
            UPDATE {table} SET revision = OLD.revision + 1 WHERE rowid = NEW.rowid;
        END
        """
        for table in ("records", "tasks")
    ),
    """
    CREATE TRIGGER dirt_records_count_insert AFTER INSERT ON records
    BEGIN
        UPDATE couch_server SET record_count = record_count + 1 WHERE id = 1;
    END
    """,
    """
    CREATE TRIGGER dirt_records_count_delete AFTER DELETE ON records
    BEGIN
        UPDATE couch_server SET record_count = record_count - 1 WHERE id = 1;
    END
    """,
]

POSTGRES_TRIGGERS = [
    """
    CREATE FUNCTION dirt_bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.revision = OLD.revision THEN
            NEW.revision := OLD.revision + 1;
        END IF;
        RETURN NEW;
    END
    $$
    """,
    *(
        f"""
        CREATE TRIGGER dirt_{table}_revision BEFORE UPDATE ON {table}
        FOR EACH ROW EXECUTE FUNCTION dirt_bump_revision()
        """
        for table in ("records", "tasks")
    ),
    """
    CREATE FUNCTION dirt_records_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE couch_server SET record_count = record_count + 1 WHERE id = 1;
        ELSE
            UPDATE couch_server SET record_count = record_count - 1 WHERE id = 1;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER dirt_records_count AFTER INSERT OR DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION dirt_records_count()
    """,
    'CREATE INDEX ix_records_id_c ON records (id COLLATE "C")',
    'CREATE INDEX ix_tasks_id_c ON tasks (id COLLATE "C")',
]
SEQ_INDEXES = {"records": "ix_records_seq", "tasks": "ix_tasks_seq"}


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild), so the triggers already on these tables stay.
    for table in ("records", "tasks"):
        op.add_column(table, sa.Column("revision", sa.Integer, nullable=False, server_default="1"))
    op.create_table(
        "couch_server",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uuid", sa.String(32), nullable=False),
        sa.Column("record_count", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "couch_local_docs",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.execute(
        sa.text(
            "INSERT INTO couch_server (id, uuid, record_count) "
            "SELECT 1, :uuid, COUNT(*) FROM records"
        ).bindparams(uuid=uuid.uuid4().hex)
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_TRIGGERS if postgres else SQLITE_TRIGGERS:
        op.execute(statement)
    collate = ' COLLATE "C"' if postgres else ""
    for table, old in SEQ_INDEXES.items():
        op.execute(f"CREATE INDEX {old}_id ON {table} (seq, id{collate})")
        op.drop_index(old, table)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, old in SEQ_INDEXES.items():
        op.create_index(old, table, ["seq"])
        op.drop_index(f"{old}_id", table)
    if postgres:
        op.execute("DROP INDEX IF EXISTS ix_tasks_id_c")
        op.execute("DROP INDEX IF EXISTS ix_records_id_c")
        op.execute("DROP TRIGGER IF EXISTS dirt_records_count ON records")
        op.execute("DROP FUNCTION IF EXISTS dirt_records_count()")
        for table in ("records", "tasks"):
            op.execute(f"DROP TRIGGER IF EXISTS dirt_{table}_revision ON {table}")
        op.execute("DROP FUNCTION IF EXISTS dirt_bump_revision()")
    else:
        for name in ("records_count_insert", "records_count_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS dirt_{name}")
        for table in ("records", "tasks"):
            op.execute(f"DROP TRIGGER IF EXISTS dirt_{table}_revision")
    op.drop_table("couch_local_docs")
    op.drop_table("couch_server")
    for table in ("tasks", "records"):
        op.drop_column(table, "revision")
