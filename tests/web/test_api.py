"""The JSON API, pages and security through the real app on a real SQLite store."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dirt.models import Attachment, TaskState
from dirt.service import Service
from dirt.web.app import create_app
from tests.web.conftest import BROWSER, finish_task, make_client, run_task

SIMPLE_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc95a4"
ATTACH_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc9858"
SIMPLE_R124 = "dbe14f5601fd40bfb82a7666cbc766fc"


def new_record(record_id: str = "r200", **extra: Any) -> dict[str, Any]:
    return {
        "record": {"_id": record_id, "description": "revision 200", **extra},
        "tasks": [{"name": "examples.simple", "platform": "linux"}, {"name": "examples.arguments"}],
    }


# ---- reads -----------------------------------------------------------------------------------


def test_records_list_newest_first_with_counts(client: TestClient) -> None:
    body = client.get("/api/records").json()
    ids = [r["_id"] for r in body["records"]]
    assert ids == ["r124", "r123"]  # same created: id breaks the tie, newest first
    assert body["records"][1]["ntasks"] == 2
    assert body["records"][1]["counts"]["waiting"] == 2
    assert body["next"] is None


def test_records_keyset_pages_cover_everything_once(seeded: Service, client: TestClient) -> None:
    docs = [{"_id": f"p{i:03d}", "type": "record", "created": 1000 + i // 3} for i in range(25)]
    seeded.submit(docs)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["before"] = cursor
        body = client.get("/api/records", params=params).json()
        seen += [r["_id"] for r in body["records"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 27
    assert seen[:2] == ["r124", "r123"]


def test_bad_cursor_is_a_400_saying_so(client: TestClient) -> None:
    response = client.get("/api/records", params={"before": "not-a-cursor"})
    assert response.status_code == 400
    assert "not a page cursor" in response.json()["error"]
    assert "submission" not in response.text


def test_record_detail_and_404(client: TestClient) -> None:
    body = client.get("/api/records/r123").json()
    assert body["record"]["description"] == "this is revision one two three"
    assert {t["_id"] for t in body["tasks"]} == {SIMPLE_R123, ATTACH_R123}
    missing = client.get("/api/records/nope")
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]


def test_state_filter_follows_task_states(seeded: Service, client: TestClient, node: str) -> None:
    def ids(state: str) -> list[str]:
        return [
            r["_id"] for r in client.get("/api/records", params={"state": state}).json()["records"]
        ]

    assert ids("waiting") == ["r124", "r123"]
    assert ids("running") == []
    run_task(seeded, SIMPLE_R123, node)
    assert ids("running") == ["r123"]
    finish_task(seeded, SIMPLE_R123, node, TaskState.FAILED, reason="boom")
    assert ids("running") == []
    assert ids("failed") == ["r123"]
    assert ids("waiting") == ["r124", "r123"]
    assert client.get("/api/records", params={"state": "bogus"}).status_code == 422
    metrics = client.get("/metrics").text
    assert 'dirt_tasks{state="failed"} 1' in metrics
    assert 'dirt_tasks{state="waiting"} 2' in metrics
    assert 'dirt_tasks{state="cancelled"} 0' in metrics
    assert "dirt_task_attempts_started_total 1" in metrics


def test_search_by_id_and_description(client: TestClient) -> None:
    found = client.get("/api/records", params={"q": "one two four"}).json()["records"]
    assert [r["_id"] for r in found] == ["r124"]
    found = client.get("/api/records", params={"q": "r12"}).json()["records"]
    assert len(found) == 2
    assert client.get("/api/records", params={"q": "%"}).json()["records"] == []


def test_task_history_and_task_detail(seeded: Service, client: TestClient, node: str) -> None:
    body = client.get("/api/tasks", params={"name": "examples.simple"}).json()
    assert {t["_id"] for t in body["tasks"]} == {SIMPLE_R123, SIMPLE_R124}
    assert client.get("/api/tasks").status_code == 422
    run_task(seeded, SIMPLE_R123, node)
    finish_task(seeded, SIMPLE_R123, node, results={"success": True, "answer": 42})
    task = client.get(f"/api/tasks/{SIMPLE_R123}").json()
    assert task["state"] == "succeeded"
    assert task["results"]["answer"] == 42
    assert task["attempt_history"][0]["node"] == "n1"
    assert client.get("/api/tasks/nope").status_code == 404


def test_nodes_list_and_enable_disable(client: TestClient, node: str) -> None:
    nodes = client.get("/api/nodes").json()
    assert nodes[0]["address"] == "n1" and nodes[0]["enabled"] is True
    assert client.post("/api/nodes/n1/disable").json()["enabled"] is False
    assert client.post("/api/nodes/n1/enable").json()["enabled"] is True
    assert client.post("/api/nodes/nope/enable").status_code == 404


# ---- writes ----------------------------------------------------------------------------------


def test_submit_record_with_tasks(client: TestClient) -> None:
    response = client.post("/api/records", json=new_record())
    assert response.status_code == 201, response.text
    assert response.json()["records"] == ["r200"]
    assert len(response.json()["tasks"]) == 2
    detail = client.get("/api/records/r200").json()
    assert len(detail["tasks"]) == 2
    added = client.post("/api/records/r200/tasks", json={"tasks": [{"name": "examples.simple"}]})
    assert added.status_code == 201, added.text
    assert len(client.get("/api/records/r200").json()["tasks"]) == 3
    assert (
        client.post(
            "/api/records/nope/tasks", json={"tasks": [{"name": "examples.simple"}]}
        ).status_code
        == 404
    )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"record": "x"}).encode(), 422, "'record' must be an object"),
        (json.dumps({**new_record(), "extra": 1}).encode(), 422, "unknown field 'extra'"),
        (
            json.dumps({"record": {"_id": "r201"}, "tasks": [{"name": "no.such.task"}]}).encode(),
            422,
            "not a module under tasks/",
        ),
        (
            json.dumps(
                {
                    "record": {"_id": "r201"},
                    "tasks": [{"name": "examples.simple", "requires": ["cpu_count > 2"]}],
                }
            ).encode(),
            422,
            "cpu_count > 2",
        ),
        (
            json.dumps({"record": {"_id": "r201", "description": 5}}).encode(),
            422,
            "'description' must be a string",
        ),
        (json.dumps({"record": {"_id": "r123"}}).encode(), 422, "already exists"),
        (json.dumps([1, 2]).encode(), 422, "expected an object"),
    ],
)
def test_bad_submissions_are_rejected_whole(
    client: TestClient, body: bytes, status: int, words: str
) -> None:
    before = client.get("/api/changes").json()["last_seq"]
    response = client.post(
        "/api/records", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert words in response.text
    assert client.get("/api/changes").json()["last_seq"] == before  # nothing written
    assert client.get("/api/records/r201").status_code == 404


def test_body_must_be_json_and_small(seeded: Service) -> None:
    seeded.settings.web.max_body_bytes = 1000
    with make_client(create_app(seeded)) as c:
        assert (
            c.post("/api/records", content=b"x", headers={"Content-Type": "text/plain"}).status_code
            == 415
        )
        big = json.dumps({"record": {"_id": "r300", "description": "x" * 2000}})
        response = c.post("/api/records", content=big, headers={"Content-Type": "application/json"})
        assert response.status_code == 413


def test_retry_and_cancel(seeded: Service, client: TestClient, node: str) -> None:
    assert client.post(f"/api/tasks/{SIMPLE_R124}/retry").status_code == 409  # still waiting
    cancelled = client.post(f"/api/tasks/{SIMPLE_R124}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["task"]["state"] == "cancelled"
    assert client.post(f"/api/tasks/{SIMPLE_R124}/cancel").status_code == 409
    retried = client.post(f"/api/tasks/{SIMPLE_R124}/retry")
    assert retried.json()["task"]["state"] == "waiting"
    assert client.post("/api/tasks/nope/retry").status_code == 404


# ---- who may write and read ------------------------------------------------------------------


def test_remote_writes_need_a_token(seeded: Service, remote: TestClient) -> None:
    refused = remote.post("/api/records", json=new_record())
    assert refused.status_code == 401
    assert "dirt token create" in refused.json()["error"]
    token = seeded.create_token("ci")
    assert seeded.verify_token(token) == "ci"
    bad = remote.post(
        "/api/records", json=new_record(), headers={"Authorization": "Bearer dirt_wrong"}
    )
    assert bad.status_code == 401
    ok = remote.post(
        "/api/records", json=new_record(), headers={"Authorization": f"Bearer {token}"}
    )
    assert ok.status_code == 201, ok.text
    seeded.revoke_token("ci")
    assert seeded.verify_token(token) is None


def test_tokens_are_stored_hashed(seeded: Service) -> None:
    from sqlalchemy import text

    token = seeded.create_token("someone")
    with seeded.engine.connect() as conn:
        stored = conn.execute(text("SELECT token_sha256 FROM api_tokens")).scalars().all()
    assert token not in stored and len(stored[0]) == 64


def test_loopback_writes_refuse_other_origins_and_hosts(client: TestClient) -> None:
    evil = client.post("/api/records", json=new_record(), headers={"Origin": "http://evil.test"})
    assert evil.status_code == 403
    rebinding = client.post("/api/records", json=new_record(), headers={"Host": "evil.test"})
    assert rebinding.status_code == 401
    same = client.post(
        "/api/records", json=new_record(), headers={"Origin": "http://127.0.0.1:8080"}
    )
    assert same.status_code == 201


def test_reads_closed_with_auth_read_token(seeded: Service) -> None:
    seeded.settings.auth.read = "token"
    token = seeded.create_token("reader")
    with make_client(create_app(seeded, bind_host="0.0.0.0"), host="203.0.113.7") as c:
        assert c.get("/api/records").status_code == 401
        assert c.get("/", headers={"Accept": "text/html"}).status_code == 401
        assert (
            c.get("/api/records", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        )
        login = c.post(
            "/login",
            content=f"token={token}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert login.status_code == 303
        assert c.get("/", headers=BROWSER).status_code == 200  # the cookie signs the browser in
        assert c.get("/healthz").status_code == 200


# ---- pages and safety ------------------------------------------------------------------------


def test_pages_render(seeded: Service, client: TestClient, node: str) -> None:
    for url in (
        "/",
        "/records/r123",
        "/tasks/examples.simple",
        "/nodes",
        "/login",
        "/?state=waiting",
        "/?q=r123",
    ):
        response = client.get(url, headers=BROWSER)
        assert response.status_code == 200, url
        assert "text/html" in response.headers["content-type"]
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert client.get("/records/nope", headers={"Accept": "text/html"}).status_code == 404
    fragment = client.get("/records/r123", headers={"X-Dirt-Fragment": "1"}).text
    assert "<html" not in fragment and "examples.attachments" in fragment


def test_waiting_task_says_why(client: TestClient) -> None:
    page = client.get("/records/r124").text
    assert "waiting-why" in page
    assert "no enabled node: add one with `dirt nodes add HOST`" in page


def test_the_queue_page_and_api_list_records_with_their_share(
    seeded: Service, client: TestClient
) -> None:
    seeded.submit_tasks("heavy", ["examples.simple"] * 3, extra={"share": 2})
    queue = client.get("/api/queue").json()
    assert [(r["record_id"], r["share"], r["waiting"]) for r in queue["queue"]] == [
        ("r123", 1, 2),
        ("r124", 1, 1),
        ("heavy", 2, 3),
    ]
    assert queue["order"] == "fair" and queue["no_dispatcher"].startswith("no dispatcher")
    page = client.get("/queue").text
    assert "heavy" in page and "Order: <strong>fair</strong>" in page
    assert "3 record(s) in the queue" in page
    assert client.get("/api/queue?limit=0").status_code == 422


def test_everything_user_supplied_is_escaped(seeded: Service, client: TestClient) -> None:
    xss = "<script>alert(1)</script>"
    seeded.submit(
        [
            {
                "_id": "rx",
                "type": "record",
                "description": xss,
                "link": "javascript:alert(1)",
                "note": xss,
            },
            {"_id": "tx", "type": "task", "record_id": "rx", "name": "examples.simple"},
        ]
    )
    for url in ("/", "/records/rx", "/tasks/examples.simple"):
        html = client.get(url, headers=BROWSER).text
        assert "<script>alert" not in html
    html = client.get("/records/rx").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="javascript:' not in html


def test_attachments_are_inert(seeded: Service, client: TestClient, node: str) -> None:
    now = time.time()
    files = [
        Attachment(ATTACH_R123, "build.log", "Build log", "text/plain", 5, b"hello", now),
        Attachment(
            ATTACH_R123, "evil.html", "Evil", "text/html", 30, b"<script>alert(1)</script>", now
        ),
        Attachment(ATTACH_R123, "pic.svg", "Picture", "image/svg+xml", 6, b"<svg/>", now),
    ]
    run_task(seeded, ATTACH_R123, node)
    finish_task(seeded, ATTACH_R123, node, attachments=files)
    log = client.get(f"/api/tasks/{ATTACH_R123}/attachments/build.log")
    assert log.status_code == 200 and log.content == b"hello"
    assert log.headers["content-type"].startswith("text/plain")
    assert log.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in log.headers["content-security-policy"]
    assert log.headers["content-disposition"].startswith("inline")
    for name in ("evil.html", "pic.svg"):
        active = client.get(f"/api/tasks/{ATTACH_R123}/attachments/{name}")
        assert active.headers["content-disposition"].startswith("attachment"), name
        assert "sandbox" in active.headers["content-security-policy"]
    assert client.get(f"/api/tasks/{ATTACH_R123}/attachments/nope").status_code == 404
    page = client.get("/records/r123").text
    assert "Build log" in page and f"/api/tasks/{ATTACH_R123}/attachments/build.log" in page


# ---- the change feed -------------------------------------------------------------------------


def test_changes_since(seeded: Service, client: TestClient, node: str) -> None:
    first = client.get("/api/changes", params={"since": 0}).json()
    assert {c["id"] for c in first["results"]} >= {"r123", "r124", SIMPLE_R123}
    last = first["last_seq"]
    assert client.get("/api/changes", params={"since": last}).json()["results"] == []
    run_task(seeded, SIMPLE_R123, node)
    later = client.get("/api/changes", params={"since": last}).json()
    assert [(c["type"], c["id"], c["state"]) for c in later["results"] if c["type"] == "task"] == [
        ("task", SIMPLE_R123, "running")
    ]
    paged = client.get("/api/changes", params={"since": 0, "limit": 1}).json()
    assert paged["results"]  # one transaction's changes are never split
    assert all(c["seq"] == paged["last_seq"] for c in paged["results"])


def test_a_change_names_the_fields_of_its_kind_only(
    seeded: Service, client: TestClient, node: str
) -> None:
    fields = {
        (c["type"], tuple(c))
        for c in client.get("/api/changes", params={"since": 0, "limit": 5000}).json()["results"]
    }
    assert fields == {
        ("record", ("seq", "type", "id")),
        ("task", ("seq", "type", "id", "record_id", "name", "state")),
        ("node", ("seq", "type", "id")),
    }


def test_changes_long_poll_wakes_on_a_write_from_another_process(
    seeded: Service, client: TestClient
) -> None:
    last = client.get("/api/changes").json()["last_seq"]
    other = Service(seeded.settings)  # another process's service: no shared listener

    def write_soon() -> None:
        time.sleep(0.3)
        other.submit([{"_id": "r500", "type": "record"}])

    writer = threading.Thread(target=write_soon)
    writer.start()
    started = time.monotonic()
    body = client.get("/api/changes", params={"since": last, "timeout": 10}).json()
    took = time.monotonic() - started
    writer.join()
    other.close()
    assert [c["id"] for c in body["results"]] == ["r500"]
    assert took < 3


def test_changes_long_poll_times_out_empty(client: TestClient) -> None:
    last = client.get("/api/changes").json()["last_seq"]
    body = client.get("/api/changes", params={"since": last, "timeout": 0.3}).json()
    assert body == {"results": [], "last_seq": last}


def test_openapi_documents_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/records",
        "/api/records/{record_id}",
        "/api/records/{record_id}/tasks",
        "/api/tasks",
        "/api/tasks/{task_id}/retry",
        "/api/tasks/{task_id}/cancel",
        "/api/tasks/{task_id}/attachments/{filename}",
        "/api/nodes",
        "/api/changes",
        "/{db_name}/_bulk_docs",
    ):
        assert path in paths, path
