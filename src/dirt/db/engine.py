"""Engines for SQLite (WAL, busy timeout, immediate write transactions) and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select, update
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import make_url

from dirt.db import schema
from dirt.errors import ConfigError

BUSY_TIMEOUT_MS = 30_000
# A store's page size, set when its file is created (SQLite ignores it for an existing one).
# A dispatcher's write rewrites a task row that grows (its results) and moves it in six
# indexes; SQLite's cost of changing a b-tree page grows with the page, and 2 KiB pages took
# a third off the CPU of those statements against the default 4 KiB (bench/store.py), with
# reads unchanged.
PAGE_SIZE = 2048
# Checkpoint the WAL into the database when it holds this many pages (SQLite's default: 1000).
# The dispatcher rewrites the same hot pages commit after commit: a checkpoint copies each
# page once however often the WAL holds it, so fewer checkpoints copy less. Durability is the
# same: a commit is in the WAL either way.
WAL_AUTOCHECKPOINT_PAGES = 4000


def make_engine(url: str) -> Engine:
    """An engine for `url`; plain postgresql:// URLs use psycopg 3."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"database URL {url!r} does not parse: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, parsed.database)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)
    raise ConfigError(f"database URL {url!r}: dirt stores in sqlite:// or postgresql:// only")


class _SQLiteCompiler(SQLiteCompiler):
    """Renders a statement's hint for a table (`with_hint(t, "INDEXED BY ix")`) after the
    table's name, where SQLite reads it; SQLAlchemy's own SQLite compiler drops it."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # A web process reads on up to 16 threads at once (dirt.web.app.WEB_THREADS): that many
    # connections stay open, so a busy page never pays for opening one (and its pragmas).
    engine = create_engine(
        url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, pool_size=16, max_overflow=16
    )
    engine.dialect.statement_compiler = _SQLiteCompiler

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE is ours to send.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL: a new file takes it
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the lock up front: a deferred transaction that later writes can fail
        # with "database is locked" instead of waiting its turn.
        immediate = conn.get_execution_options().get("dirt_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction for writing: committed on success, rolled back on any error."""
    with engine.connect() as conn:
        conn = conn.execution_options(dirt_write=True)
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A consistent snapshot for reading several tables."""
    with engine.connect() as conn, conn.begin():
        yield conn


_NEXT_SEQ = (
    update(schema.sequence)
    .where(schema.sequence.c.id == 1)
    .values(value=schema.sequence.c.value + 1)
    .returning(schema.sequence.c.value)
)
_CURRENT_SEQ = select(schema.sequence.c.value).where(schema.sequence.c.id == 1)


def next_seq(conn: Connection) -> int:
    """The next value of the change sequence; holds the sequence row until commit."""
    return int(_NEXT_SEQ_PREPARED.fetch(conn, {})[0]["value"])


def current_seq(conn: Connection) -> int:
    return int(conn.execute(_CURRENT_SEQ).scalar_one_or_none() or 0)


class Prepared:
    """A Core statement compiled once per dialect and run through the driver's executemany.

    The dispatcher's per-task statements run thousands of times a second; this skips the work
    SQLAlchemy repeats on every call (cache key, parameter processing) while the SQL text still
    comes from the Core statement, so it stays the same on SQLite and PostgreSQL. Parameters
    named in `json_params` are serialised here, as the JSON column type would have.
    """

    def __init__(self, statement: Any, json_params: Sequence[str] = ()) -> None:
        self.statement = statement
        self.json_params = tuple(json_params)
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}

    def _compile(self, conn: Connection) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        name = conn.dialect.name
        found = self._compiled.get(name)
        if found is None:
            compiled = self.statement.compile(dialect=conn.dialect)
            order = tuple(compiled.positiontup) if compiled.positional else None
            found = (str(compiled), order, dict(compiled.params))
            self._compiled[name] = found
        return found

    def fetch(self, conn: Connection, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Run once on the driver's own cursor (inside `conn`'s transaction, past SQLAlchemy's
        per-statement machinery: one request of a pull-mode agent runs a dozen of these); the
        rows returned, by column name, as the driver gives them (a JSON column comes as text,
        a boolean on SQLite as 0 or 1)."""
        cursor = self._execute(conn, row)
        try:
            if cursor.description is None:
                return []
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
        finally:
            cursor.close()

    def change(self, conn: Connection, row: dict[str, Any]) -> int:
        """Run a write once on the driver's own cursor (as `fetch`); the rows it changed."""
        cursor = self._execute(conn, row)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def _execute(self, conn: Connection, row: dict[str, Any]) -> Any:
        sql, order, defaults = self._compile(conn)
        values = {**defaults, **row}
        for key in self.json_params:
            if values[key] is not None:
                values[key] = json.dumps(values[key])
        cursor = conn.connection.cursor()
        try:
            cursor.execute(sql, tuple(values[k] for k in order) if order is not None else values)
        except BaseException:
            cursor.close()
            raise
        return cursor

    def run(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """Execute once per row; returns the number of rows changed in all."""
        if not rows:
            return 0
        if len(rows) == 1:
            return self.change(conn, rows[0])
        sql, order, defaults = self._compile(conn)
        params: list[Any] = []
        for row in rows:
            values = {**defaults, **row}
            for key in self.json_params:
                if values[key] is not None:
                    values[key] = json.dumps(values[key])
            params.append(tuple(values[k] for k in order) if order is not None else values)
        return conn.exec_driver_sql(sql, params if len(params) > 1 else params[0]).rowcount


# Every write takes the next value: compiled once (see Prepared).
_NEXT_SEQ_PREPARED = Prepared(_NEXT_SEQ)
