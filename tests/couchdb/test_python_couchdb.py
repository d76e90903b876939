"""python-couchdb (`couchdb` on PyPI), unchanged, against dirt's real web server."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import couchdb
import couchdb.http
import pytest

from dirt.service import Service
from tests.couchdb.conftest import serve, wait_until


@pytest.fixture(autouse=True)
def collect_the_clients_sockets() -> Iterator[None]:
    """python-couchdb leaves the pooled connections of a `Server` to the garbage collector
    (it has no close): collect them after each test, their ResourceWarning silenced, so that
    they do not surface later inside another test."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def db(dirt_url: str, db_name: str) -> couchdb.Database:
    return couchdb.Server(dirt_url)[db_name]


def test_server_and_database(dirt_url: str, db_name: str) -> None:
    server = couchdb.Server(dirt_url)
    assert server.version() == "3.3.3"
    assert db_name in server and "nosuchdb" not in server
    assert list(server) == [db_name]
    with pytest.raises(couchdb.http.ResourceNotFound):
        server["nosuchdb"]
    info = server[db_name].info()
    assert info["db_name"] == db_name and info["doc_count"] == 5
    assert isinstance(info["update_seq"], str)


def test_creates_records_and_tasks_and_reads_them_back(db: couchdb.Database) -> None:
    record_id, record_rev = db.save(
        {"_id": "r900", "type": "record", "description": "from python-couchdb", "sha": "abc"}
    )
    assert (record_id, record_rev.startswith("1-")) == ("r900", True)
    task_id, task_rev = db.save({"type": "task", "record_id": "r900", "name": "examples.simple"})
    record = db["r900"]
    assert record.rev == record_rev and record["sha"] == "abc"
    task = db[task_id]
    assert task.rev == task_rev and task["state"] == "waiting" and task["record_id"] == "r900"
    ids = [row.id for row in db.view("_all_docs", keys=["r900", task_id])]
    assert ids == ["r900", task_id]


def test_validation_and_conflicts(db: couchdb.Database) -> None:
    with pytest.raises(couchdb.http.Forbidden) as bad:
        db.save({"_id": "t901", "type": "task", "record_id": "r123", "name": "no.such.module"})
    assert "no.such.module" in str(bad.value)
    with pytest.raises(couchdb.http.ResourceConflict):
        db.save({"_id": "r123", "type": "record"})  # exists: a new document needs no _rev
    record = db["r123"]
    record["description"] = "rewritten"
    with pytest.raises(couchdb.http.Forbidden):
        db.save(record)
    assert db["r123"]["description"] == "this is revision one two three"


def test_cancel_and_retry_by_setting_state(db: couchdb.Database) -> None:
    task = db["dbe14f5601fd40bfb82a7666cbc766fc"]
    stale = dict(task)
    task["state"] = "cancelled"
    db.save(task)
    cancelled = db[task.id]
    assert cancelled["state"] == "cancelled" and cancelled.rev != stale["_rev"]
    stale["state"] = "waiting"
    with pytest.raises(couchdb.http.ResourceConflict):
        db.save(stale)
    cancelled["state"] = "waiting"
    db.save(cancelled)
    assert db[task.id]["state"] == "waiting"


def test_changes_then_continuous_feed(seeded: Service, db: couchdb.Database) -> None:
    first = db.changes(since=0, limit=2)
    assert [c["id"] for c in first["results"]] == ["r123", "r124"]
    rest = db.changes(since=first["last_seq"], include_docs=True)
    assert len(rest["results"]) == 3 and all("doc" in c for c in rest["results"])
    seen: list[dict[str, Any]] = []

    def follow() -> None:
        # Heartbeats keep it open until the first change; limit=1 ends it there.
        seen.extend(db.changes(feed="continuous", since=rest["last_seq"], heartbeat=200, limit=1))

    reader = threading.Thread(target=follow)
    reader.start()
    seeded.submit_tasks("r902", ["examples.simple"], description="while python-couchdb follows")
    reader.join(15)
    assert not reader.is_alive()
    assert seen[0]["id"] == "r902" and "last_seq" in seen[-1]


@pytest.mark.parametrize("settings_overrides", [{"auth": {"read": "token"}, "log": {"file": ""}}])
def test_logs_in_with_a_token(seeded: Service, db_name: str) -> None:
    token = seeded.create_token("ci")
    server = serve(seeded, bind_host="0.0.0.0")
    try:
        url = f"http://127.0.0.1:{server.port}/"
        with pytest.raises(couchdb.http.Unauthorized):
            couchdb.Server(url)[db_name].info()
        with pytest.raises(couchdb.http.Unauthorized):
            couchdb.Server(url.replace("//", f"//ci:{token}x@"))[db_name].info()
        db = couchdb.Server(url.replace("//", f"//ci:{token}@"))[db_name]
        assert db.info()["doc_count"] == 5
        db.save({"_id": "r903", "type": "record"})
        wait_until(lambda: "r903" in db, what="r903 stored")
    finally:
        server.stop()
