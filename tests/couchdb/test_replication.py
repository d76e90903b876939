"""A real replicator: PouchDB Server's `POST /_replicate` copies dirt's database, then again
incrementally after more records, runs and attachments, and ends with the same documents."""

from __future__ import annotations

import base64
import hashlib
import urllib.request
from typing import Any

import pytest
from sqlalchemy import select

from dirt.db.schema import couch_local_docs
from dirt.models import Attachment, TaskState
from dirt.service import Service
from tests.couchdb.conftest import HTTPFailure, PouchDBServer, http_json, serve, wait_until
from tests.web.conftest import finish_task, run_task

RECORD = "r123"
TASK = "2e3dabbff38ca7f6fa05c5a0cbbc95a4"  # examples.simple of r123
ATTACHING = "2e3dabbff38ca7f6fa05c5a0cbbc9858"  # examples.attachments of r123


def dirt_docs(url: str) -> dict[str, Any]:
    rows = http_json("GET", url + "/_all_docs?include_docs=true")["rows"]
    return {row["id"]: row["doc"] for row in rows}


def same_documents(dirt_db: str, pouchdb: PouchDBServer, target: str) -> dict[str, Any]:
    """The replica holds exactly dirt's documents, revisions and attachment digests."""
    ours, theirs = dirt_docs(dirt_db), pouchdb.all_docs(target)
    assert theirs.keys() == ours.keys()
    for doc_id, doc in ours.items():
        assert theirs[doc_id] == doc, doc_id
    return theirs


def test_replicates_then_continues_incrementally(
    seeded: Service, dirt_url: str, db_name: str, pouchdb: PouchDBServer, node: str
) -> None:
    source = dirt_url + db_name
    first = pouchdb.replicate(source, "replica")
    assert first["ok"] is True and first["docs_written"] == 5
    same_documents(source, pouchdb, "replica")

    # More records, a task run through to its results with an attachment, a cancellation.
    seeded.submit_tasks("r125", ["examples.simple"], description="after the first copy")
    run_task(seeded, ATTACHING, node)
    log = b"compiled\nall tests passed\n"
    attachment = Attachment(ATTACHING, "build.log", "Build log", "text/plain", len(log), log)
    finish_task(seeded, ATTACHING, node, attachments=[attachment])
    seeded.cancel_task(TASK)
    again = pouchdb.replicate(source, "replica")
    assert again["ok"] is True
    # Only what changed is read again: r125 and its task, the finished and the cancelled task.
    assert again["docs_read"] == 4
    replica = same_documents(source, pouchdb, "replica")
    assert replica[TASK]["state"] == TaskState.CANCELLED
    stub = replica[ATTACHING]["_attachments"]["build.log"]
    assert stub["digest"] == "md5-" + base64.b64encode(hashlib.md5(log).digest()).decode()
    with urllib.request.urlopen(f"{pouchdb.url}replica/{ATTACHING}/build.log") as response:
        assert response.read() == log

    # One branch per document on the replica: a task written many times has no conflicts.
    doc = http_json("GET", f"{pouchdb.url}replica/{ATTACHING}?conflicts=true&revs_info=true")
    assert "_conflicts" not in doc
    assert doc["_revs_info"][0]["rev"] == doc["_rev"]
    assert len(doc["_revs_info"]) == int(doc["_rev"].split("-")[0])

    # Nothing new: nothing read.
    assert pouchdb.replicate(source, "replica")["docs_read"] == 0


def test_checkpoints_live_in_local_documents(
    seeded: Service, dirt_url: str, db_name: str, pouchdb: PouchDBServer
) -> None:
    source = dirt_url + db_name
    report = pouchdb.replicate(source, "replica")
    # PouchDB keeps its checkpoint on both sides: on dirt, a _local document.
    with seeded.engine.connect() as conn:
        ids = list(conn.execute(select(couch_local_docs.c.id)).scalars())
    assert len(ids) == 1
    ours = http_json("GET", f"{source}/_local/{ids[0]}")
    assert ours["last_seq"] == report["last_seq"]
    assert ours["_rev"] == "0-1"


def test_continuous_replication_follows_new_records(
    seeded: Service, db_name: str, tmp_path: Any
) -> None:
    server = serve(seeded)
    pouchdb = PouchDBServer(tmp_path)  # its own: a continuous replication outlives a request
    try:
        source = f"http://127.0.0.1:{server.port}/{db_name}"
        assert pouchdb.replicate(source, "live", continuous=True) == {"ok": True}
        wait_until(lambda: len(pouchdb.all_docs("live")) == 5, what="the first copy")
        seeded.submit_tasks("r126", ["examples.simple"], description="while it watches")
        found = wait_until(lambda: pouchdb.all_docs("live").get("r126"), what="r126 copied")
        assert found["description"] == "while it watches"
    finally:
        pouchdb.stop()
        server.stop()


@pytest.mark.parametrize("settings_overrides", [{"auth": {"read": "token"}, "log": {"file": ""}}])
def test_replicates_with_a_token_as_password(
    seeded: Service, db_name: str, pouchdb: PouchDBServer
) -> None:
    token = seeded.create_token("replicator")
    server = serve(seeded, bind_host="0.0.0.0")  # writes from loopback need a token too
    try:
        host = f"127.0.0.1:{server.port}"
        # (Not through pouchdb-server: a failed replication crashes it, under Node 20.)
        with pytest.raises(HTTPFailure) as denied:
            http_json("GET", f"http://{host}/{db_name}/_changes")
        assert denied.value.status == 401
        report = pouchdb.replicate(f"http://replicator:{token}@{host}/{db_name}", "allowed")
        assert report["ok"] is True and report["docs_written"] == 5
        assert len(pouchdb.all_docs("allowed")) == 5
    finally:
        server.stop()
