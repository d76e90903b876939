"""Indexes for the records search (`/?q=`): substring matches without scanning every record.

SQLite: `records_search`, an FTS5 table with the trigram tokenizer (SQLite >= 3.34) holding each
record's id and description under the record's rowid. Triggers on `records` keep it exact in
the same transaction as the write; existing records are copied in here. A trigram index finds
substrings of 3 or more characters, case-insensitively; shorter searches scan (see
`dirt.db.browse`). If this SQLite has no FTS5 or no trigram tokenizer, no table is made and the
search scans, as it did before this revision.

PostgreSQL: GIN trigram indexes (the `pg_trgm` extension, shipped in PostgreSQL's contrib) on
`records.id` and `records.description`, which serve `ILIKE '%text%'`. Where the extension cannot
be created (not installed, no privilege), the indexes are skipped and the search scans.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SQLITE_TABLE = "CREATE VIRTUAL TABLE records_search USING fts5(id, description, tokenize='trigram')"

# The FTS rowid is the record's rowid (records is a rowid table: its key is a string). Records
# are only ever inserted today; the update and delete triggers keep the index right regardless.
SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER dirt_records_search_insert AFTER INSERT ON records
    BEGIN
        INSERT INTO records_search (rowid, id, description)
        VALUES (NEW.rowid, NEW.id, NEW.description);
    END
    """,
    """
    CREATE TRIGGER dirt_records_search_update AFTER UPDATE OF id, description ON records
    BEGIN
        DELETE FROM records_search WHERE rowid = OLD.rowid;
        INSERT INTO records_search (rowid, id, description)
        VALUES (NEW.rowid, NEW.id, NEW.description);
    END
    """,
    """
    CREATE TRIGGER dirt_records_search_delete AFTER DELETE ON records
    BEGIN
        DELETE FROM records_search WHERE rowid = OLD.rowid;
    END
    """,
]

POSTGRES_INDEXES = {
    "ix_records_id_trgm": "id",
    "ix_records_description_trgm": "description",
}


def _sqlite_has_trigram(conn: sa.Connection) -> bool:
    try:
        with conn.begin_nested():
            conn.exec_driver_sql(
                "CREATE VIRTUAL TABLE temp.dirt_trigram_probe USING fts5(x, tokenize='trigram')"
            )
            conn.exec_driver_sql("DROP TABLE temp.dirt_trigram_probe")
    except sa.exc.OperationalError:
        return False
    return True


def _postgres_has_trgm(conn: sa.Connection) -> bool:
    # A savepoint, so a failure does not abort the migration's transaction.
    try:
        with conn.begin_nested():
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError:
        return False
    return True


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        if _postgres_has_trgm(conn):
            for name, column in POSTGRES_INDEXES.items():
                op.execute(f"CREATE INDEX {name} ON records USING gin ({column} gin_trgm_ops)")
        return
    if not _sqlite_has_trigram(conn):
        return
    op.execute(SQLITE_TABLE)
    op.execute(
        "INSERT INTO records_search (rowid, id, description) "
        "SELECT rowid, id, description FROM records"
    )
    for statement in SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in POSTGRES_INDEXES:
            op.execute(f"DROP INDEX IF EXISTS {name}")
        # The extension stays: other objects may use it.
        return
    for name in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS dirt_records_search_{name}")
    op.execute("DROP TABLE IF EXISTS records_search")
