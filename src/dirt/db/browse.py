"""The reads behind the web pages, written so their cost does not grow with the store.

Every list is a keyset scan of an index: (created, id) row-value comparisons, never OFFSET and
never COUNT(*) over tasks. Counts come from `record_states` and `state_counts`, which triggers
keep (migration 0002). The records search (`search`) is a short LIKE scan of the newest records,
then an index: FTS5 trigram on SQLite, pg_trgm on PostgreSQL (migration 0004); see `_search_page`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Connection,
    Select,
    column,
    func,
    literal_column,
    select,
    table,
    tuple_,
)

from dirt.db.records import record_from_row
from dirt.db.schema import attempts, nodes, record_states, records, state_counts, tasks
from dirt.db.tasks import task_from_row
from dirt.models import Record, Task, TaskState

# A search first scans this many records (from the cursor, newest first) with LIKE: a search
# that matches often fills its page there without touching an index. Otherwise the rest of the
# page comes from the index, whose cost follows the number of matches, not of records.
SEARCH_WINDOW = 500
# The trigram index (SQLite FTS5) finds substrings of at least this many characters; for 1 or 2
# characters the rest of the page is a LIKE scan of the older records (slower on a big store).
TRIGRAM = 3

# migration 0004 (SQLite): FTS5 trigram index of records(id, description), rowid = records.rowid.
_records_search = table("records_search", column("rowid"))
_records_rowid: ColumnClause[Any] = literal_column("records.rowid")


def _like(search: str) -> str:
    return "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _fts_phrase(search: str) -> str:
    """`search` as one FTS5 phrase: a string literal, so none of it is query syntax."""
    return '"' + search.replace('"', '""') + '"'


def _ordered(state: str | None, before: tuple[float, str] | None) -> Select[Any]:
    """Records newest first, from `before` on; only those with a task in `state`."""
    if state is None:
        query = select(records).order_by(records.c.created.desc(), records.c.id.desc())
        if before is not None:
            query = query.where(tuple_(records.c.created, records.c.id) < tuple_(*before))
        return query
    query = (
        select(records)
        .join(record_states, record_states.c.record_id == records.c.id)
        .where(record_states.c.state == state)
        .order_by(record_states.c.created.desc(), record_states.c.record_id.desc())
    )
    if before is not None:
        query = query.where(
            tuple_(record_states.c.created, record_states.c.record_id) < tuple_(*before)
        )
    return query


def _matches(
    postgres: bool, id_: ColumnElement[str], description: ColumnElement[str], search: str
) -> ColumnElement[bool]:
    """Case-insensitive substring of id or description: ILIKE on PostgreSQL (served by the
    pg_trgm indexes of migration 0004), LIKE on SQLite (which ignores ASCII case only)."""
    pattern = _like(search)
    if postgres:
        return id_.ilike(pattern, escape="\\") | description.ilike(pattern, escape="\\")
    return id_.like(pattern, escape="\\") | description.like(pattern, escape="\\")


def _has_fts(conn: Connection) -> bool:
    found = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records_search'"
    )
    return found.first() is not None


def record_page(
    conn: Connection,
    limit: int,
    before: tuple[float, str] | None = None,
    state: str | None = None,
    search: str | None = None,
) -> list[Record]:
    """Records newest first; only those with a task in `state`; id or description containing
    `search` (case-insensitive)."""
    if not search:
        return [record_from_row(row) for row in conn.execute(_ordered(state, before).limit(limit))]
    return _search_page(conn, limit, before, state, search)


def _search_page(
    conn: Connection,
    limit: int,
    before: tuple[float, str] | None,
    state: str | None,
    search: str,
) -> list[Record]:
    if "\x00" in search:
        # PostgreSQL text cannot hold NUL, and SQLite's LIKE would stop reading the pattern there
        # (so "%\0%" would match everything): no record is found by it.
        return []
    postgres = conn.dialect.name == "postgresql"
    base = _ordered(state, before)
    # 1. The next SEARCH_WINDOW records by a plain scan: cheap, and enough when matches are common.
    window = base.limit(SEARCH_WINDOW).subquery()
    query = (
        select(window)
        .where(_matches(postgres, window.c.id, window.c.description, search))
        .order_by(window.c.created.desc(), window.c.id.desc())
        .limit(limit)
    )
    found = [record_from_row(row) for row in conn.execute(query)]
    if len(found) >= limit:
        return found
    edge = conn.execute(
        base.with_only_columns(records.c.created, records.c.id).offset(SEARCH_WINDOW - 1).limit(1)
    ).first()
    if edge is None:
        return found  # the window held every remaining record
    # 2. The rest through the index: only matching records are read, then sorted.
    rest = _indexed(conn, state, (edge.created, edge.id), search).limit(limit - len(found))
    if not postgres or len(search) < TRIGRAM:
        return found + [record_from_row(row) for row in conn.execute(rest)]
    # PostgreSQL's costs make ILIKE look cheap, so with a table of a few thousand pages it
    # prefers reading all of it over the trigram indexes (about 10x slower at 100,000 records).
    # Rule the sequential scan out for this one statement; without the indexes it still scans.
    # (Under 3 characters pg_trgm has no trigram to look up: there the plain scan is faster.)
    previous = conn.exec_driver_sql("SHOW enable_seqscan").scalar_one()
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    try:
        rows = conn.execute(rest).all()
    finally:
        conn.execute(select(func.set_config("enable_seqscan", previous, True)))
    return found + [record_from_row(row) for row in rows]


def _indexed(
    conn: Connection, state: str | None, before: tuple[float, str], search: str
) -> Select[Any]:
    """Records from `before` on matching `search`, found through the search index."""
    postgres = conn.dialect.name == "postgresql"
    match = _matches(postgres, records.c.id, records.c.description, search)
    if postgres:
        # The matches first (bitmap scans of the pg_trgm indexes), then their order: else the
        # planner may walk (created, id) from `before` and test every older record.
        matches = select(records.c.id).where(match).cte("search_matches")
        matches = matches.prefix_with("MATERIALIZED")
        return _ordered(state, before).where(records.c.id.in_(select(matches.c.id)))
    query = _ordered(state, before).where(match)
    if len(search) >= TRIGRAM and _has_fts(conn):
        # The trigram index yields candidates (it folds case beyond ASCII); LIKE above keeps
        # the result exactly that of the scan.
        candidates = select(_records_search.c.rowid).where(
            literal_column("records_search").match(_fts_phrase(search))
        )
        query = query.where(_records_rowid.in_(candidates))
    return query


def record_counts(conn: Connection, record_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """For each record id, its number of tasks per state (every state present)."""
    counts = {rid: {s.value: 0 for s in TaskState} for rid in record_ids}
    if not record_ids:
        return counts
    query = select(record_states.c.record_id, record_states.c.state, record_states.c.n).where(
        record_states.c.record_id.in_(list(record_ids))
    )
    for record_id, state, n in conn.execute(query):
        counts[record_id][state] = int(n)
    return counts


def task_runs(
    conn: Connection, name: str, limit: int, before: tuple[float, str] | None = None
) -> list[Task]:
    """Every run of task `name` across records, newest first (index name, created, id)."""
    query = (
        select(tasks)
        .where(tasks.c.name == name)
        .order_by(tasks.c.created.desc(), tasks.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(tuple_(tasks.c.created, tasks.c.id) < tuple_(*before))
    return [task_from_row(row) for row in conn.execute(query)]


def run_outcomes(conn: Connection, name: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` runs of `name`, just what a chart needs."""
    query = (
        select(
            tasks.c.id,
            tasks.c.record_id,
            tasks.c.created,
            tasks.c.started,
            tasks.c.completed,
            tasks.c.state,
        )
        .where(tasks.c.name == name)
        .order_by(tasks.c.created.desc(), tasks.c.id.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def state_totals(conn: Connection) -> dict[str, int]:
    totals = {s.value: 0 for s in TaskState}
    for state, n in conn.execute(select(state_counts.c.state, state_counts.c.n)):
        totals[state] = int(n)
    return totals


def attempts_started(conn: Connection) -> int:
    """How many task attempts were ever started (attempt ids only grow)."""
    return int(conn.execute(select(func.max(attempts.c.id))).scalar_one_or_none() or 0)


def recent_durations(conn: Connection, limit: int) -> list[float]:
    """Run times of the `limit` most recently completed tasks (index on completed)."""
    query = (
        select(tasks.c.started, tasks.c.completed)
        .where(tasks.c.completed.is_not(None))
        .order_by(tasks.c.completed.desc())
        .limit(limit)
    )
    return [c - s for s, c in conn.execute(query) if s is not None and c is not None and c >= s]


def nodes_online(conn: Connection) -> tuple[int, int]:
    """(online and enabled, all) nodes."""
    found = list(conn.execute(select(nodes.c.online, nodes.c.enabled)))
    return sum(1 for online, enabled in found if online and enabled), len(found)


def running_on(conn: Connection, address: str, limit: int = 50) -> list[Task]:
    query = (
        select(tasks)
        .where(tasks.c.state == TaskState.RUNNING.value, tasks.c.node == address)
        .limit(limit)
    )
    return [task_from_row(row) for row in conn.execute(query)]
