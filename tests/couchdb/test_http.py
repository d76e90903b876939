"""The CouchDB surface's behaviour in detail, through the app (requests as clients send them)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dirt.models import Attachment
from dirt.service import Service
from dirt.web.app import create_app
from tests.couchdb.conftest import serve
from tests.web.conftest import finish_task, make_client, run_task

JSON = {"Accept": "application/json"}
TASK = "2e3dabbff38ca7f6fa05c5a0cbbc9858"


@pytest.fixture
def c(seeded: Service) -> Iterator[TestClient]:
    with make_client(create_app(seeded, bind_host="127.0.0.1")) as client:
        yield client


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- the server --------------------------------------------------------------------------------


def test_root_is_the_welcome_for_clients_and_the_overview_for_browsers(c: TestClient) -> None:
    for headers in (JSON, {"Accept": "*/*"}, {}):
        welcome = c.get("/", headers=headers)
        assert welcome.json()["couchdb"] == "Welcome", headers
        assert welcome.json()["vendor"]["name"] == "dirt"
    page = c.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert "text/html" in page.headers["content-type"] and "r123" in page.text
    assert c.head("/", headers=JSON).status_code == 200
    # The page's own requests: its live part (fetch sends */*) and its filters.
    fragment = c.get("/", headers={"Accept": "*/*", "X-Dirt-Fragment": "1"})
    assert "text/html" in fragment.headers["content-type"]
    assert "text/html" in c.get("/?state=waiting", headers=JSON).headers["content-type"]


def test_uuids_and_all_dbs(c: TestClient, db_name: str) -> None:
    assert len(set(c.get("/_uuids?count=5").json()["uuids"])) == 5
    assert c.get("/_uuids?count=1001").json()["error"] == "bad_request"
    assert c.get("/_all_dbs").json() == [db_name]
    assert c.post("/_dbs_info", json={"keys": [db_name, "x"]}).json()[1] == {
        "key": "x",
        "error": "not_found",
    }


def test_other_databases_answer_in_couchdb_shape(c: TestClient) -> None:
    assert c.head("/nosuchdb").status_code == 404
    assert c.get("/nosuchdb").json() == {"error": "not_found", "reason": "Database does not exist."}
    assert c.put("/newdb").json()["error"] == "not_implemented"
    assert (
        c.get("/nosuchdb", headers={"Accept": "text/html"})
        .headers["content-type"]
        .startswith("text/html")
    )


@pytest.mark.parametrize(
    "path",
    [
        "/_replicate",
        "/_active_tasks",
        "/_scheduler/jobs",
        "/_node/_local/_config",
        "/{db}/_design/app",
        "/{db}/_design/app/_view/by_state",
        "/{db}/_design_docs",
        "/{db}/_find",
        "/{db}/_index",
        "/{db}/_explain",
        "/{db}/_purge",
        "/{db}/_compact",
        "/{db}/_security",
    ],
)
def test_the_rest_of_couchdb_is_not_implemented(c: TestClient, db_name: str, path: str) -> None:
    response = c.post(path.format(db=db_name), json={})
    assert response.status_code == 501
    assert response.json()["error"] == "not_implemented"


def test_database_info_counts_without_scanning(
    c: TestClient, seeded: Service, db_name: str
) -> None:
    before = c.get(f"/{db_name}").json()
    seeded.submit_tasks("r500", ["examples.simple", "examples.simple"])
    after = c.get(f"/{db_name}").json()
    assert (before["doc_count"], after["doc_count"]) == (5, 8)
    assert after["update_seq"] != before["update_seq"]
    assert c.put(f"/{db_name}").status_code == 412
    assert c.delete(f"/{db_name}").status_code == 403


# ---- documents -----------------------------------------------------------------------------------


def test_head_etag_and_not_modified(c: TestClient, db_name: str) -> None:
    doc = c.get(f"/{db_name}/r123").json()
    head = c.head(f"/{db_name}/r123")
    assert head.headers["etag"] == f'"{doc["_rev"]}"'
    again = c.get(f"/{db_name}/r123", headers={"If-None-Match": head.headers["etag"]})
    assert again.status_code == 304
    assert c.get(f"/{db_name}/nope").json() == {"error": "not_found", "reason": "missing"}
    assert c.get(f"/{db_name}/r123?rev=1-{'0' * 32}").status_code == 404


def test_rev_changes_with_every_write_and_stale_writes_conflict(
    c: TestClient, seeded: Service, db_name: str, node: str
) -> None:
    url = f"/{db_name}/{TASK}"
    first = c.get(url).json()
    run_task(seeded, TASK, node)
    running = c.get(url).json()
    assert running["_rev"] != first["_rev"] and running["state"] == "running"
    assert int(running["_rev"].split("-")[0]) > int(first["_rev"].split("-")[0])
    first["state"] = "cancelled"
    assert c.put(url, json=first).json()["error"] == "conflict"
    assert c.put(url, json={k: v for k, v in running.items() if k != "_rev"}).status_code == 409
    cancel = c.put(url, json={**running, "state": "cancelled"})
    assert cancel.status_code == 201
    asked = c.get(url).json()
    assert asked["_rev"] == cancel.json()["rev"]
    assert asked["state"] == "running" and asked["cancel_requested"] is True


def test_dirt_owns_the_fields_it_sets(c: TestClient, db_name: str) -> None:
    url = f"/{db_name}/{TASK}"
    doc = c.get(url).json()
    for change in ({"state": "succeeded"}, {"node": "elsewhere"}, {"kwargs": {"a": 1}}):
        refused = c.put(url, json={**doc, **change})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    same = c.put(url, json=doc)  # unchanged: nothing to do, the same revision
    assert same.status_code == 201 and same.json()["rev"] == doc["_rev"]
    assert c.delete(f"{url}?rev={doc['_rev']}").status_code == 403
    assert c.delete(f"{url}?rev=1-{'0' * 32}").status_code == 409


def test_new_documents_go_through_dirt_validation(c: TestClient, db_name: str) -> None:
    bad = c.put(f"/{db_name}/t1", json={"type": "task", "record_id": "r123", "name": "x y"})
    assert bad.status_code == 403 and "dotted Python identifier" in bad.json()["reason"]
    assert c.put(f"/{db_name}/x", json={"type": "node"}).status_code == 403
    assert c.put(f"/{db_name}/a", json={"_id": "b", "type": "record"}).status_code == 400
    assert c.put(f"/{db_name}/_weird", json={"type": "record"}).status_code in (400, 501)
    made = c.post(f"/{db_name}", json={"type": "record", "description": "server-made id"})
    assert made.status_code == 201
    assert c.get(f"/{db_name}/{made.json()['id']}").json()["description"] == "server-made id"
    replicated = c.put(f"/{db_name}/r9", json={"type": "record"}, params={"new_edits": "false"})
    assert replicated.status_code == 501
    assert c.put(f"/{db_name}/r9", content=b"{nope").json()["error"] == "bad_request"


def test_attachments_as_stubs_inline_and_files(
    c: TestClient, seeded: Service, db_name: str, node: str
) -> None:
    run_task(seeded, TASK, node)
    content = b"line one\nline two\n"
    finish_task(
        seeded,
        TASK,
        node,
        attachments=[Attachment(TASK, "out.txt", "Output", "text/plain", len(content), content)],
    )
    doc = c.get(f"/{db_name}/{TASK}").json()
    stub = doc["_attachments"]["out.txt"]
    assert stub["stub"] is True and stub["length"] == len(content)
    assert stub["digest"].startswith("md5-")
    inline = c.get(f"/{db_name}/{TASK}?attachments=true").json()["_attachments"]["out.txt"]
    assert inline["data"] == "bGluZSBvbmUKbGluZSB0d28K"
    got = c.get(f"/{db_name}/{TASK}/out.txt")
    assert got.content == content and got.headers["etag"] == f'"{stub["digest"]}"'
    assert c.get(f"/{db_name}/{TASK}/nope.txt").status_code == 404
    assert c.put(f"/{db_name}/{TASK}/new.txt", content=b"x").status_code == 403
    late = c.put(f"/{db_name}/{TASK}", json={**doc, "state": "cancelled"})
    assert late.status_code == 403 and "nothing to cancel" in late.json()["reason"]


# ---- _all_docs -------------------------------------------------------------------------------


def test_all_docs_parameters(c: TestClient, db_name: str) -> None:
    url = f"/{db_name}/_all_docs"
    every = [r["id"] for r in c.get(url).json()["rows"]]
    assert every == sorted(every) and len(every) == 5
    page = c.get(url, params={"startkey": json.dumps(every[1]), "limit": 2}).json()
    assert [r["id"] for r in page["rows"]] == every[1:3]
    assert page["offset"] == 1 and page["total_rows"] == 5
    assert [r["id"] for r in c.get(url, params={"skip": 3}).json()["rows"]] == every[3:]
    down = c.get(url, params={"descending": "true", "endkey": json.dumps(every[2])}).json()
    assert [r["id"] for r in down["rows"]] == every[2:][::-1]
    closed = c.get(url, params={"endkey": json.dumps(every[2]), "inclusive_end": "false"})
    assert [r["id"] for r in closed.json()["rows"]] == every[:2]
    keyed = c.post(url + "?include_docs=true", json={"keys": ["r124", "nope", "r123"]}).json()
    assert [r.get("id") for r in keyed["rows"]] == ["r124", None, "r123"]
    assert keyed["rows"][1] == {"key": "nope", "error": "not_found"}
    assert keyed["rows"][0]["doc"]["description"] == "this is revision one two four"
    assert c.get(url, params={"startkey": "r1"}).json()["error"] == "query_parse_error"


def test_all_docs_pages_through_more_than_a_page(
    seeded: Service, c: TestClient, db_name: str
) -> None:
    seeded.submit_tasks("r600", ["examples.simple"] * 1200)
    rows = c.get(f"/{db_name}/_all_docs", params={"skip": 2, "limit": 1100}).json()["rows"]
    ids = [r["id"] for r in rows]
    assert len(ids) == 1100 and ids == sorted(set(ids))
    everything = [r["id"] for r in c.get(f"/{db_name}/_all_docs").json()["rows"]]
    assert len(everything) == 1206 and everything[2:1102] == ids


# ---- _changes ---------------------------------------------------------------------------------


def test_changes_pages_with_opaque_sequences(c: TestClient, seeded: Service, db_name: str) -> None:
    url = f"/{db_name}/_changes"
    seqs, since = [], "0"
    while True:
        page = c.get(url, params={"since": since, "limit": 2}).json()
        seqs += [(r["seq"], r["id"]) for r in page["results"]]
        since = page["last_seq"]
        if not page["results"]:
            break
    assert [i for _, i in seqs][:2] == ["r123", "r124"] and len(seqs) == 5
    assert all(isinstance(s, str) for s, _ in seqs)
    assert c.get(url, params={"since": since}).json()["results"] == []
    assert c.get(url, params={"since": "12-nonsense"}).json()["error"] == "bad_request"
    seeded.cancel_task(TASK)
    again = c.get(url, params={"since": since, "include_docs": "true", "style": "all_docs"})
    [change] = again.json()["results"]
    assert change["id"] == TASK and change["doc"]["state"] == "cancelled"
    assert change["changes"] == [{"rev": change["doc"]["_rev"]}]
    assert again.json()["pending"] == 0


def test_changes_filtered_by_doc_ids(c: TestClient, db_name: str) -> None:
    url = f"/{db_name}/_changes"
    posted = c.post(url + "?filter=_doc_ids", json={"doc_ids": ["r124", TASK]}).json()
    assert [r["id"] for r in posted["results"]] == ["r124", TASK]
    got = c.get(url, params={"filter": "_doc_ids", "doc_ids": json.dumps(["r123"])}).json()
    assert [r["id"] for r in got["results"]] == ["r123"]
    assert c.get(url, params={"filter": "_design"}).json()["results"] == []
    assert c.get(url, params={"filter": "app/mine"}).status_code == 501


def test_newest_changes_first(c: TestClient, db_name: str) -> None:
    ascending = [r["id"] for r in c.get(f"/{db_name}/_changes").json()["results"]]
    newest = c.get(f"/{db_name}/_changes", params={"descending": "true", "limit": 2}).json()
    assert [r["id"] for r in newest["results"]] == ascending[::-1][:2]


def test_longpoll_answers_at_the_first_change_or_the_timeout(
    c: TestClient, seeded: Service, db_name: str
) -> None:
    url = f"/{db_name}/_changes"
    started = time.monotonic()
    empty = c.get(url, params={"feed": "longpoll", "since": "now", "timeout": 300}).json()
    assert empty["results"] == [] and 0.25 < time.monotonic() - started < 5
    now = empty["last_seq"]
    ready = c.get(url, params={"feed": "longpoll", "since": "0"}).json()
    assert len(ready["results"]) == 5  # changes waiting: answered at once
    seeded.submit_tasks("r700", [])
    later = c.get(url, params={"feed": "longpoll", "since": now, "timeout": 5000}).json()
    assert [r["id"] for r in later["results"]] == ["r700"]


def test_continuous_feed_heartbeat_timeout_and_limit(c: TestClient, db_name: str) -> None:
    url = f"/{db_name}/_changes"
    got = c.get(url, params={"feed": "continuous", "timeout": 200, "include_docs": "true"})
    rows = lines(got.text)
    assert [r["id"] for r in rows[:2]] == ["r123", "r124"] and "doc" in rows[0]
    assert rows[-1] == {"last_seq": rows[-1]["last_seq"], "pending": 0} and len(rows) == 6
    limited = lines(c.get(url, params={"feed": "continuous", "limit": 2}).text)
    assert len(limited) == 3 and limited[-1]["pending"] == 3


def test_eventsource_feed(c: TestClient, db_name: str) -> None:
    got = c.get(f"/{db_name}/_changes", params={"feed": "eventsource", "timeout": 200})
    assert got.headers["content-type"].startswith("text/event-stream")
    events = [e for e in got.text.split("\n\n") if e.strip()]
    assert len(events) == 5
    data, event_id = events[0].split("\n")
    change = json.loads(data.removeprefix("data: "))
    assert change["id"] == "r123" and event_id == f"id: {change['seq']}"
    resumed = c.get(
        f"/{db_name}/_changes",
        params={"feed": "eventsource", "timeout": 200},
        headers={"Last-Event-ID": change["seq"]},
    )
    assert len([e for e in resumed.text.split("\n\n") if e.strip()]) == 4


# ---- replication reads and _local ---------------------------------------------------------


def test_revs_diff_bulk_get_and_open_revs(
    c: TestClient, seeded: Service, db_name: str, node: str
) -> None:
    old = c.get(f"/{db_name}/{TASK}").json()["_rev"]
    run_task(seeded, TASK, node)
    new = c.get(f"/{db_name}/{TASK}").json()["_rev"]
    diff = c.post(f"/{db_name}/_revs_diff", json={TASK: [old, new, "9-" + "a" * 32]}).json()
    assert diff == {TASK: {"missing": ["9-" + "a" * 32], "possible_ancestors": [new]}}
    got = c.post(
        f"/{db_name}/_bulk_get?revs=true&latest=true", json={"docs": [{"id": TASK, "rev": old}]}
    ).json()["results"][0]["docs"][0]["ok"]
    assert got["_rev"] == new and got["_revisions"]["ids"][-1] == old.split("-")[1]
    plain = c.post(f"/{db_name}/_bulk_get", json={"docs": [{"id": TASK, "rev": old}]}).json()
    assert plain["results"][0]["docs"][0]["error"]["error"] == "not_found"
    revs = c.get(f"/{db_name}/{TASK}", params={"open_revs": json.dumps([new, old])}, headers=JSON)
    assert revs.json() == [{"ok": revs.json()[0]["ok"]}, {"missing": old}]
    every = c.get(f"/{db_name}/{TASK}?open_revs=all", headers={"Accept": "multipart/mixed"})
    assert every.headers["content-type"].startswith("multipart/mixed") and new in every.text


def test_local_documents(c: TestClient, db_name: str) -> None:
    url = f"/{db_name}/_local/checkpoint-1"
    assert c.get(url).status_code == 404
    assert c.put(url, json={"last_seq": "1"}).json()["rev"] == "0-1"
    assert c.put(url, json={"last_seq": "2"}).status_code == 409
    assert c.put(url, json={"last_seq": "2", "_rev": "0-1"}).json()["rev"] == "0-2"
    assert c.get(url).json() == {"last_seq": "2", "_id": "_local/checkpoint-1", "_rev": "0-2"}
    before = c.get(f"/{db_name}").json()["update_seq"]
    assert c.delete(url + "?rev=0-2").status_code == 200
    assert c.get(f"/{db_name}").json()["update_seq"] == before  # not a change of the database


# ---- who may --------------------------------------------------------------------------------


def test_session_logs_in_with_a_token(seeded: Service, db_name: str) -> None:
    seeded.settings.auth.read = "token"
    token = seeded.create_token("couch")
    with make_client(create_app(seeded, bind_host="0.0.0.0"), host="203.0.113.9") as remote:
        assert remote.get(f"/{db_name}").json()["error"] == "unauthorized"
        assert remote.get("/_session").json()["userCtx"] == {"name": None, "roles": []}
        wrong = remote.post("/_session", json={"name": "couch", "password": "nope"})
        assert wrong.status_code == 401
        other = remote.post("/_session", json={"name": "other", "password": token})
        assert other.status_code == 401
        form = remote.post(
            "/_session",
            content=f"name=couch&password={token}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert form.json()["ok"] is True and "AuthSession" in form.cookies
        session = remote.get("/_session").json()
        assert session["userCtx"] == {"name": "couch", "roles": ["dirt:read", "dirt:write"]}
        assert remote.put(f"/{db_name}/r800", json={"type": "record"}).status_code == 201
        evil = remote.put(
            f"/{db_name}/r801", json={"type": "record"}, headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 401  # the cookie does not carry a cross-site write
        remote.delete("/_session")
        assert remote.get(f"/{db_name}").status_code == 401


def test_basic_auth_with_a_token(seeded: Service, db_name: str) -> None:
    token = seeded.create_token("basic")
    with make_client(create_app(seeded, bind_host="0.0.0.0"), host="203.0.113.9") as remote:
        assert remote.put(f"/{db_name}/r810", json={"type": "record"}).status_code == 401
        assert remote.get(f"/{db_name}", auth=("basic", "wrong")).status_code == 401
        made = remote.put(f"/{db_name}/r810", json={"type": "record"}, auth=("basic", token))
        assert made.status_code == 201
        bearer = remote.put(
            f"/{db_name}/r811",
            json={"type": "record"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert bearer.status_code == 201


@pytest.mark.parametrize("feed", ["continuous", "longpoll", "eventsource"])
def test_heartbeats_keep_a_quiet_feed_open(seeded: Service, db_name: str, feed: str) -> None:
    server = serve(seeded)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", f"/{db_name}/_changes?feed={feed}&since=now&heartbeat=100")
        response = connection.getresponse()
        started = time.monotonic()
        beat = b"event: heartbeat\ndata: \n\n" if feed == "eventsource" else b"\n"
        assert response.read(len(beat) * 2) == beat * 2
        assert time.monotonic() - started > 0.15  # two beats, 100 ms apart, no change between
        connection.close()
    finally:
        server.stop()
