"""The record list filtered by branch (`?branch=`): the records made from commits on it, newest
first, with the other filters and keyset pages; on SQLite and a real PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from dirt.db import browse
from dirt.db.schema import records
from dirt.service import Service


def fill(store: Service) -> None:
    docs = [
        {
            "_id": f"{i:040x}",
            "type": "record",
            "description": f"commit {i}",
            "created": 1_700_000_000 + i,
            "ref": "refs/heads/main" if i % 2 else "refs/heads/release/1",
        }
        for i in range(10)
    ]
    docs.append(
        {"_id": "tagged", "type": "record", "created": 1_800_000_000, "ref": "refs/tags/v1"}
    )
    docs.append({"_id": "plain", "type": "record", "created": 1_800_000_001})
    docs.append({"type": "task", "record_id": f"{3:040x}", "name": "examples.simple"})
    store.submit(docs)


def ids(
    store: Service,
    limit: int = 50,
    before: tuple[float, str] | None = None,
    state: str | None = None,
    search: str | None = None,
    branch: str | None = None,
) -> list[str]:
    return [s.record.id for s in store.record_page(limit, before, state, search, branch)]


def test_a_branch_lists_its_records_newest_first(store: Service) -> None:
    fill(store)
    assert ids(store, branch="main") == [f"{i:040x}" for i in (9, 7, 5, 3, 1)]
    assert ids(store, branch="refs/heads/release/1")[0] == f"{8:040x}"
    assert ids(store, branch="refs/tags/v1") == ["tagged"]
    assert ids(store, branch="nothing-here") == []


def test_the_branch_filter_goes_with_pages_state_and_search(store: Service) -> None:
    fill(store)
    first = store.record_page(limit=2, branch="main")
    last = first[-1].record
    rest = ids(store, limit=10, before=(last.created, last.id), branch="main")
    assert rest == [f"{i:040x}" for i in (5, 3, 1)]
    assert ids(store, state="waiting", branch="main") == [f"{3:040x}"]
    assert ids(store, state="waiting", branch="release/1") == []
    assert ids(store, search="commit 7", branch="main") == [f"{7:040x}"]
    assert ids(store, search="commit 8", branch="main") == []


def test_sqlite_reads_a_branch_through_its_index(service: Service) -> None:
    with service.engine.connect() as conn:
        query = select(records).where(browse.record_ref(conn) == "refs/heads/main")
        query = query.order_by(records.c.created.desc(), records.c.id.desc()).limit(5)
        sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(row) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    assert "USING INDEX ix_records_ref" in plan
    assert "TEMP B-TREE" not in plan  # the index gives the order too
