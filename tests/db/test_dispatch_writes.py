"""The dispatcher's own writes, on SQLite and PostgreSQL: each moves a task's revision by exactly
one (CouchDB replicas compute every ancestor's `_rev` from it), whether the statement or the
trigger moves it; a refused write moves nothing; the counts follow every state change.
And the SQLite store's file settings those writes are tuned for."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dirt.config import Settings
from dirt.db.couch_docs import revision_of
from dirt.db.engine import PAGE_SIZE, WAL_AUTOCHECKPOINT_PAGES, make_engine
from dirt.db.schema import record_states, state_counts
from dirt.models import TaskState
from dirt.service import Service
from tests.db.test_store import finish, reserve, result, start, submit_many


@pytest.fixture
def other(store_settings: Settings) -> Iterator[Service]:
    """A second master on the same store."""
    svc = Service(store_settings)
    yield svc
    svc.close()


def revision(store: Service, task_id: str) -> int:
    with store._read() as conn:
        found = revision_of(conn, "task", task_id)
    assert found is not None
    return found


def test_a_reservation_moves_the_revision_by_one(store: Service) -> None:
    submit_many(store, 1)
    before = revision(store, "t000")
    reserve(store, "t000")
    assert revision(store, "t000") == before + 1


def test_a_start_then_a_finish_move_the_revision_by_one_each(store: Service) -> None:
    submit_many(store, 1)
    reserve(store, "t000")
    reserved = revision(store, "t000")
    assert start(store, "t000") == ["t000"]
    assert revision(store, "t000") == reserved + 1
    finish(store, result("t000", 1))
    assert revision(store, "t000") == reserved + 2


def test_a_run_started_and_finished_in_one_write_moves_the_revision_by_one(
    store: Service,
) -> None:
    submit_many(store, 1)
    reserve(store, "t000")
    reserved = revision(store, "t000")
    finish(store, result("t000", 1, started=time.time()))
    assert store.task("t000").state is TaskState.SUCCEEDED
    assert revision(store, "t000") == reserved + 1


def test_a_start_and_a_finish_in_one_step_move_the_revision_by_one_each(store: Service) -> None:
    submit_many(store, 1)
    reserve(store, "t000")
    reserved = revision(store, "t000")
    store.dispatch([result("t000", 1)], [("t000", "n1", time.time(), 1)], [])
    assert revision(store, "t000") == reserved + 2


def test_a_refused_write_leaves_the_revision_alone(store: Service, other: Service) -> None:
    submit_many(store, 1)
    reserve(store, "t000")
    reserved = revision(store, "t000")
    assert reserve(other, "t000") == []  # another master's reservation
    assert other.dispatch([], [("t000", "n1", time.time(), 1)], [])[0] == []  # its start
    finish(store, result("t000", 2, started=time.time()))  # a stale attempt
    assert revision(store, "t000") == reserved


def test_the_revision_still_moves_on_a_write_outside_the_dispatcher(store: Service) -> None:
    submit_many(store, 1)
    reserve(store, "t000")
    reserved = revision(store, "t000")
    store.release()
    assert revision(store, "t000") == reserved + 1


def test_counts_follow_batches_of_folded_and_started_runs(store: Service) -> None:
    ids = submit_many(store, 40)
    assert reserve(store, *ids) == ids
    now = time.time()
    started = store.dispatch([], [(t, "n1", now, 1) for t in ids[:10]], [])[0]
    assert started == ids[:10]
    finish(
        store,
        *[result(t, 1) for t in ids[:5]],
        *[result(t, 1, state=TaskState.FAILED, started=now) for t in ids[10:30]],
    )
    expected = {"succeeded": 5, "running": 5, "failed": 20, "waiting": 10}
    with store._read() as conn:
        per_record = dict(
            conn.execute(
                select(record_states.c.state, record_states.c.n).where(
                    record_states.c.record_id == "r1"
                )
            ).all()
        )
        overall = {
            state: n
            for state, n in conn.execute(select(state_counts.c.state, state_counts.c.n)).all()
            if n
        }
    assert per_record == expected
    assert overall == expected


def test_a_new_sqlite_store_has_small_pages_and_a_larger_wal(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new.sqlite'}")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (a)")
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == PAGE_SIZE
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        wal = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert wal == WAL_AUTOCHECKPOINT_PAGES
    engine.dispose()


def test_an_existing_sqlite_store_keeps_its_page_size_and_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE t (a)")
        old.execute("INSERT INTO t VALUES (1)")
    old.close()
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 4096
        assert [row[0] for row in conn.exec_driver_sql("SELECT a FROM t ORDER BY a")] == [1, 2]
    engine.dispose()
