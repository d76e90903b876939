"""pycouchdb, unchanged, against dirt's real web server: documents, _all_docs, changes."""

from __future__ import annotations

import threading
from typing import Any

import pycouchdb
import pycouchdb.exceptions
import pytest

from dirt.service import Service
from tests.couchdb.conftest import serve


@pytest.fixture
def db(dirt_url: str, db_name: str) -> Any:
    return pycouchdb.Server(dirt_url).database(db_name)


def test_server_info(dirt_url: str, db_name: str) -> None:
    server = pycouchdb.Server(dirt_url)
    info = server.info()
    assert info["couchdb"] == "Welcome" and info["vendor"]["name"] == "dirt"
    assert list(server) == [db_name]
    with pytest.raises(pycouchdb.exceptions.NotFound):
        server.database("nosuchdb")


def test_creates_and_reads_back(db: Any) -> None:
    record = db.save({"_id": "r950", "type": "record", "description": "from pycouchdb"})
    task = db.save({"type": "task", "record_id": "r950", "name": "examples.arguments"})
    assert db.get("r950")["_rev"] == record["_rev"]
    stored = db.get(task["_id"])
    assert stored["_rev"] == task["_rev"] and stored["name"] == "examples.arguments"
    bulk = db.save_bulk(
        [
            {"_id": "r951", "type": "record"},
            {"type": "task", "record_id": "r951", "name": "examples.simple"},
        ]
    )
    assert all(db.get(d["_id"])["_rev"] == d["_rev"] for d in bulk)
    rows = db.all(keys=["r950", "r951", "nope"])
    assert [r.get("id") for r in rows] == ["r950", "r951", None]
    assert len(db) == 5 + 4


def test_changes_list_and_feed(seeded: Service, db: Any) -> None:
    last_seq, changes = db.changes_list()
    assert {c["id"] for c in changes} >= {"r123", "r124"} and isinstance(last_seq, str)
    got: list[dict[str, Any]] = []

    def reader(message: dict[str, Any], db: Any) -> None:
        got.append(message)
        if message.get("id") == "r952":
            raise pycouchdb.exceptions.FeedReaderExited()

    follow = threading.Thread(
        target=db.changes_feed, args=(reader,), kwargs={"since": last_seq, "heartbeat": 200}
    )
    follow.start()
    seeded.submit_tasks("r952", ["examples.simple"])
    follow.join(15)
    assert not follow.is_alive()
    assert "r952" in [m.get("id") for m in got]


def test_conflict_and_session_login(seeded: Service, db_name: str) -> None:
    seeded.settings.auth.read = "token"
    token = seeded.create_token("pyc")
    server = serve(seeded, bind_host="0.0.0.0")
    try:
        url = f"http://pyc:{token}@127.0.0.1:{server.port}/"
        with pytest.raises(pycouchdb.exceptions.AuthenticationFailed):
            pycouchdb.Server(url.replace(token, "wrong"), authmethod="session")
        db = pycouchdb.Server(url, authmethod="session").database(db_name)  # AuthSession cookie
        doc = db.get("r123")
        db.save({"_id": "r953", "type": "record"})
        with pytest.raises(pycouchdb.exceptions.Conflict):
            db.save({**doc, "_rev": "1-" + "0" * 32})
    finally:
        server.stop()
