"""The records search on SQLite (FTS5 trigram) and PostgreSQL (pg_trgm): same answers as a scan."""

from __future__ import annotations

import random
import string
import time
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, select, text

from dirt.config import Settings
from dirt.db import browse
from dirt.db.engine import make_engine, write_transaction
from dirt.db.migrate import alembic_config
from dirt.db.schema import records
from dirt.service import Service

ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# Non-ASCII letters only in lower case: SQLite's LIKE folds ASCII case only, PostgreSQL's ILIKE
# more; on these both agree with the reference below.
WORDS = ["Build", "build", "BUILD", "fix", "Fix bug", "naïve", "café", "100%", "a_b", "x\\y"]
WORDS += ['say "hi"', "it's", "NEAR(a b)", "id:r1", "foo*", "AND", "-x", "^start", "r0", "日本"]
NEEDLES = ["build", "BUILD", "bu", "b", "fix b", "ïve", "café", "%", "_", "\\", '"hi"', "'s"]
NEEDLES += ["NEAR(", "id:", "o*", "and", "-x", "^st", "r0", "r01", "日本", "本", "zzz", "00%"]


def contains(needle: str, doc: dict[str, Any]) -> bool:
    fold = needle.translate(ASCII_LOWER)
    return any(fold in doc[f].translate(ASCII_LOWER) for f in ("_id", "description"))


def make_records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        words = rng.sample(WORDS, rng.randint(0, 3))
        docs.append(
            {
                "_id": f"r{i:03d}" if i % 7 else f"R{i:03d}-{rng.choice(WORDS[:3])}",
                "type": "record",
                "description": " ".join(words),
                # Ties on `created` are ordered by id.
                "created": 1_600_000_000 + rng.randrange(n // 2),
            }
        )
    return docs


def newest_first(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: (d["created"], d["_id"]), reverse=True)


def all_pages(store: Service, needle: str, limit: int, state: str | None = None) -> list[str]:
    ids: list[str] = []
    before = None
    while True:
        page = store.record_page(limit, before, state, needle)
        ids += [s.record.id for s in page]
        if len(page) < limit:
            return ids
        before = (page[-1].record.created, page[-1].record.id)


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window of a few records, so both the scan and the index answer parts of each page."""
    monkeypatch.setattr(browse, "SEARCH_WINDOW", 7)


def test_search_equals_a_substring_filter(store: Service, small_window: None) -> None:
    rng = random.Random(11)
    docs = make_records(rng, 240)
    store.submit(docs)
    for needle in NEEDLES:
        expected = [d["_id"] for d in newest_first(docs) if contains(needle, d)]
        for limit in (1, 5, 50, 500):
            assert all_pages(store, needle, limit) == expected, (needle, limit)


def test_search_with_a_state_filter(store: Service, small_window: None) -> None:
    rng = random.Random(12)
    docs = make_records(rng, 120)
    tasks = []
    for doc in docs:
        tasks.append({"_id": f"t-{doc['_id']}", "record_id": doc["_id"]})
    store.submit(
        docs + [{"type": "task", "name": "examples.simple", **t} for t in tasks],
    )
    running = {d["_id"] for d in docs if rng.random() < 0.4}
    started = [f"t-{rid}" for rid in sorted(running)]
    assert store.dispatch([], [], started) == ([], started)
    assert store.dispatch([], [(t, "n1", time.time(), 1) for t in started], [])[0] == started
    for needle in NEEDLES:
        want = [d["_id"] for d in newest_first(docs) if contains(needle, d)]
        assert all_pages(store, needle, 4, "running") == [i for i in want if i in running]
        assert all_pages(store, needle, 4, "waiting") == [i for i in want if i not in running]


def test_search_beyond_the_window_uses_the_index(store: Service, small_window: None) -> None:
    docs = [
        {"_id": f"r{i:04d}", "type": "record", "description": f"rev {i}", "created": 1_000 + i}
        for i in range(60)
    ]
    docs[3]["description"] = "the Needle in a haystack"
    store.submit(docs)
    assert [s.record.id for s in store.record_page(50, None, None, "needle")] == ["r0003"]
    assert [s.record.id for s in store.record_page(2, (1_004, "r0004"), None, "rev 1")] == ["r0001"]
    assert store.record_page(50, None, None, "no such text") == []


def test_odd_input_is_only_text(store: Service, small_window: None) -> None:
    store.submit(
        [
            {"_id": f"o{i:03d}", "type": "record", "description": "plain", "created": 3_000 + i}
            for i in range(20)
        ]
    )
    for needle in ["\x00", "a\x00b", '"', '""', "*", "plain OR x", "NEAR(plain)", "description:p"]:
        assert store.record_page(50, None, None, needle) == [], needle
    assert len(store.record_page(50, None, None, "PLAIN")) == 20


def test_search_index_follows_writes(store: Service, small_window: None) -> None:
    store.submit(
        [
            {"_id": f"w{i:03d}", "type": "record", "description": "plain", "created": 2_000 + i}
            for i in range(30)
        ]
    )
    with write_transaction(store.engine) as conn:
        conn.execute(text("UPDATE records SET description = 'now Shiny' WHERE id = 'w002'"))
        conn.execute(text("DELETE FROM records WHERE id = 'w001'"))
    assert [s.record.id for s in store.record_page(50, None, None, "shiny")] == ["w002"]
    assert [s.record.id for s in store.record_page(50, None, None, "w00")][-2:] == ["w002", "w000"]
    assert "w002" not in [s.record.id for s in store.record_page(50, None, None, "plain")]


def test_the_index_exists(store: Service) -> None:
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            found = conn.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'records'")
            ).scalars()
            assert {"ix_records_id_trgm", "ix_records_description_trgm"} <= set(found)
        else:
            assert browse._has_fts(conn)


@pytest.mark.parametrize("state", [None, "waiting"])
def test_the_search_past_the_window_reads_the_index(store: Service, state: str | None) -> None:
    needle = 'Say "hi" AND'
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # A near-empty table: ask whether the trigram indexes can serve the match at all
            # (the planner picks them by cost on a big store; see bench/web.py).
            match = browse._matches(True, records.c.id, records.c.description, needle)
            query = select(records.c.id).where(match)
            conn.exec_driver_sql("SET enable_seqscan = off")
            compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
            plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {compiled}").scalars())
            assert "ix_records_id_trgm" in plan and "ix_records_description_trgm" in plan, plan
            return
        query = browse._indexed(conn, state, (1e12, "z"), needle)
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
        plan = "\n".join(row[-1] for row in rows)
        scans = [line for line in plan.splitlines() if line.startswith("SCAN ")]
        assert scans and all("records_search VIRTUAL TABLE" in s for s in scans), plan
        short = browse._indexed(conn, state, (1e12, "z"), "hi")
        assert "records_search" not in str(short.compile(conn))


def test_migration_indexes_existing_records(store_settings: Settings) -> None:
    """A store made before revision 0004 gets its records indexed when it is upgraded."""
    engine: Engine = make_engine(store_settings.database_url)
    try:
        config = alembic_config()
        with write_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
            conn.execute(
                text(
                    "INSERT INTO records (id, description, created, extra, seq) "
                    "VALUES ('old1', 'Legacy entry', 1.0, '{}', 1), "
                    "('old2', 'other', 2.0, '{}', 1)"
                )
            )
        service = Service(store_settings, engine=engine)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(browse, "SEARCH_WINDOW", 1)
            assert [s.record.id for s in service.record_page(50, None, None, "legacy")] == ["old1"]
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                n = conn.execute(text("SELECT count(*) FROM records_search")).scalar_one()
                assert n == 2
    finally:
        engine.dispose()
