"""Token scopes, reads behind tokens off loopback, and the audit of writes (in process)."""

from __future__ import annotations

import getpass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dirt.dispatch.runner import probe
from dirt.models import TokenScope
from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.auth import read_mode
from tests.web.conftest import make_client, run_task

SIMPLE_R124 = "dbe14f5601fd40bfb82a7666cbc766fc"


def new_record(record_id: str = "r300") -> dict[str, Any]:
    return {"record": {"_id": record_id}, "tasks": [{"name": "examples.simple"}]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- where reads need a token --------------------------------------------------------------


def test_reads_are_open_on_loopback_and_need_a_token_beyond_it() -> None:
    assert read_mode("auto", "127.0.0.1", behind_proxy=False).open
    assert read_mode("auto", "::1", behind_proxy=False).open
    assert not read_mode("auto", "0.0.0.0", behind_proxy=False).open
    assert not read_mode("auto", "10.1.2.3", behind_proxy=False).open
    assert not read_mode("auto", "127.0.0.1", behind_proxy=True).open, "a proxy serves others"
    assert read_mode("open", "0.0.0.0", behind_proxy=False).open
    assert not read_mode("token", "127.0.0.1", behind_proxy=False).open


def test_the_mode_says_why() -> None:
    assert "beyond loopback" in read_mode("auto", "0.0.0.0", behind_proxy=False).why
    assert 'read = "open"' in read_mode("open", "0.0.0.0", behind_proxy=False).why


def test_off_loopback_anonymous_reads_are_refused_and_say_how(remote: TestClient) -> None:
    for path in ("/api/records", "/api/nodes", "/api/changes", "/metrics", "/", "/nodes"):
        refused = remote.get(path, headers={"Accept": "text/html"})
        assert refused.status_code == 401, path
    answer = remote.get("/api/records").json()["error"]
    assert "dirt token create NAME --scope read" in answer and "/login" in answer
    assert remote.get("/healthz").status_code == 200
    assert remote.get("/login").status_code == 200


def test_a_read_token_reads_but_never_writes(seeded: Service, remote: TestClient) -> None:
    token = seeded.create_token("dashboard", TokenScope.READ)
    assert remote.get("/api/records", headers=bearer(token)).status_code == 200
    assert remote.get("/nodes", headers=bearer(token)).status_code == 200
    refused = remote.post("/api/records", json=new_record(), headers=bearer(token))
    assert refused.status_code == 403
    assert "may only read" in refused.json()["error"]
    assert remote.post(f"/api/tasks/{SIMPLE_R124}/cancel", headers=bearer(token)).status_code == 403


def test_an_api_token_reads_and_writes(seeded: Service, remote: TestClient) -> None:
    token = seeded.create_token("ci")
    assert remote.get("/api/records", headers=bearer(token)).status_code == 200
    assert remote.post("/api/records", json=new_record(), headers=bearer(token)).status_code == 201


def test_a_revoked_token_stops_reading(seeded: Service, remote: TestClient) -> None:
    token = seeded.create_token("gone", TokenScope.READ)
    assert remote.get("/api/records", headers=bearer(token)).status_code == 200
    seeded.revoke_token("gone")
    assert remote.get("/api/records", headers=bearer(token)).status_code == 401


def test_sign_in_with_a_read_token_keeps_the_buttons_away(seeded: Service) -> None:
    token = seeded.create_token("viewer", TokenScope.READ)
    app = create_app(seeded, bind_host="0.0.0.0")
    with make_client(app, host="203.0.113.7") as browser:
        signed = browser.post("/login", data={"token": token}, follow_redirects=False)
        assert signed.status_code == 303
        page = browser.get("/nodes")
        assert page.status_code == 200 and "signed in (read only)" in page.text
        assert browser.post(f"/tasks/{SIMPLE_R124}/cancel").status_code == 403


def test_explicit_open_reads_off_loopback(seeded: Service) -> None:
    seeded.settings.auth.read = "open"
    with make_client(create_app(seeded, bind_host="0.0.0.0"), host="203.0.113.7") as c:
        assert c.get("/api/records").status_code == 200
        assert c.post("/api/records", json=new_record()).status_code == 401


def test_verify_token_names_only_tokens_that_may_write(seeded: Service) -> None:
    reader = seeded.create_token("r", TokenScope.READ)
    writer = seeded.create_token("w")
    assert seeded.verify_token(reader) is None
    assert seeded.verify_token(writer) == "w"
    found = seeded.find_token(reader)
    assert found is not None and found.scope is TokenScope.READ
    assert [(t.name, t.scope) for t in seeded.tokens()] == [
        ("r", TokenScope.READ),
        ("w", TokenScope.API),
    ]


# ---- the audit -----------------------------------------------------------------------------


def test_writes_with_a_token_are_audited_by_its_name(seeded: Service, remote: TestClient) -> None:
    token = seeded.create_token("ci-bot")
    assert remote.post("/api/records", json=new_record(), headers=bearer(token)).status_code == 201
    cancel = remote.post(f"/api/tasks/{SIMPLE_R124}/cancel", headers=bearer(token))
    assert cancel.status_code == 200
    entries = [e for e in seeded.audit() if e.via != "local"]
    assert [(e.actor, e.via, e.action) for e in entries] == [
        ("ci-bot", "token", "submit"),
        ("ci-bot", "token", "cancel"),
    ]
    assert entries[0].target == "r300: 1 task(s)"
    assert entries[0].client == "203.0.113.7"
    assert entries[0].request == "POST /api/records"
    assert entries[1].target == SIMPLE_R124


def test_a_rejected_write_leaves_no_audit_row(seeded: Service, remote: TestClient) -> None:
    token = seeded.create_token("ci")
    before = len(seeded.audit())
    bad = {"record": {"_id": "r301"}, "tasks": [{"name": "no.such.module"}]}
    assert remote.post("/api/records", json=bad, headers=bearer(token)).status_code == 422
    assert len(seeded.audit()) == before


def test_writes_on_this_machine_are_audited_under_the_user(seeded: Service) -> None:
    seeded.cancel_task(SIMPLE_R124)
    last = seeded.audit()[-1]
    assert (last.actor, last.via, last.action, last.target) == (
        getpass.getuser(),
        "local",
        "cancel",
        SIMPLE_R124,
    )


def test_the_dispatchers_own_writes_are_not_audited(seeded: Service) -> None:
    seeded.save_node("n1", {"cpu_count": 2, "platform": "linux"})
    before = len(seeded.audit())
    run_task(seeded, SIMPLE_R124, "n1")
    seeded.node_health("n1", online=True, load=[0.1, 0.1, 0.1])
    assert len(seeded.audit()) == before


def test_audit_since_and_limit(seeded: Service) -> None:
    for name in ("a", "b", "c"):
        seeded.create_token(name)
    newest = seeded.audit(limit=2)
    assert [e.target for e in newest] == ["b (scope api)", "c (scope api)"]
    assert seeded.audit(since=newest[-1].at + 1) == []


@pytest.mark.parametrize("path", ["/api/nodes", "/nodes"])
def test_reads_of_nodes_show_no_environment_value(
    seeded: Service, client: TestClient, path: str
) -> None:
    info = probe("local", seeded.settings.nodes)
    info["environ"]["MYSECRET"] = "hunter2"
    seeded.save_node("local", info)
    shown = client.get(path, headers={"Accept": "text/html"})
    assert shown.status_code == 200
    assert "MYSECRET" in shown.text and "hunter2" not in shown.text
