"""POST /hooks/git, /hooks/github and /hooks/gitlab in the app: what each answers, and that a
delivery refused for any reason leaves the store as it was. (tests/ci runs the same endpoints
through a real `dirt serve` with real pushes.)"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dirt.service import Service
from dirt.web.app import create_app
from tests.sources.forge_payloads import (
    HEAD,
    SECRET,
    github_payload,
    gitlab_headers,
    gitlab_payload,
    signed,
)
from tests.web.conftest import BROWSER, make_client

HOOK_SHA = "a" * 40


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    return {
        "log": {"file": ""},
        "ci": {"tasks": ["examples.simple"], "branches": ["main", "release/*"]},
        "hooks": {"github_secret_env": "TEST_GH_SECRET", "gitlab_secret_env": "TEST_GL_SECRET"},
        "web": {"max_body_bytes": 100_000},
    }


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GH_SECRET", SECRET)
    monkeypatch.setenv("TEST_GL_SECRET", SECRET)


@pytest.fixture
def local(service: Service) -> Iterator[TestClient]:
    with make_client(create_app(service, bind_host="127.0.0.1")) as client:
        yield client


@pytest.fixture
def remote(service: Service) -> Iterator[TestClient]:
    """A client on another machine; the server listens on every address."""
    with make_client(create_app(service, bind_host="0.0.0.0"), host="203.0.113.9") as client:
        yield client


def hook_body(ref: str = "refs/heads/main", sha: str = HOOK_SHA) -> bytes:
    head = {"sha": sha, "timestamp": 1_700_000_000, "author": "Ada <ada@example.org>"}
    update = {"ref": ref, "before": None, "after": sha, "head": {**head, "subject": "Add"}}
    return json.dumps(
        {"dirt_hook": 1, "repository": "/srv/git/p.git", "updates": [update]}
    ).encode()


def github(client: TestClient, body: bytes, **headers: str) -> Any:
    return client.post("/hooks/github", content=body, headers={**signed(body), **headers})


def stored(service: Service) -> list[str]:
    return [s.record.id for s in service.record_page(100)]


def test_github_is_refused_while_no_secret_is_configured(
    remote: TestClient, service: Service
) -> None:
    body = json.dumps(github_payload()).encode()
    answer = github(remote, body)
    assert answer.status_code == 403
    assert "github_secret_env" in answer.json()["error"]
    assert stored(service) == []


def test_gitlab_is_refused_while_no_secret_is_configured(remote: TestClient) -> None:
    body = json.dumps(gitlab_payload(ref="refs/heads/main")).encode()
    assert remote.post("/hooks/gitlab", content=body, headers=gitlab_headers()).status_code == 403


def test_a_signed_github_push_is_taken(remote: TestClient, service: Service, secrets: None) -> None:
    body = json.dumps(github_payload()).encode()
    answer = github(remote, body)
    assert answer.status_code == 202
    assert answer.json() == {
        "ok": True,
        "records": [HEAD],
        "tasks": 1,
        "existing": [],
        "replay": False,
        "ignored": [],
    }
    assert [t.name for t in service.record_detail(HEAD).tasks] == ["examples.simple"]


def test_a_replayed_github_delivery_makes_nothing(
    remote: TestClient, service: Service, secrets: None
) -> None:
    body = json.dumps(github_payload()).encode()
    github(remote, body)
    again = github(remote, body)
    assert again.status_code == 202 and again.json()["replay"] is True
    assert len(service.record_detail(HEAD).tasks) == 1


def test_a_forged_github_push_is_401(remote: TestClient, service: Service, secrets: None) -> None:
    body = json.dumps(github_payload()).encode()
    answer = github(remote, body, **{"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert answer.status_code == 401
    assert stored(service) == []


def test_a_github_body_that_is_not_json_is_400(
    remote: TestClient, service: Service, secrets: None
) -> None:
    answer = github(remote, b"not json")
    assert answer.status_code == 400 and "not JSON" in answer.json()["error"]
    assert stored(service) == []


def test_a_push_of_a_branch_not_in_branches_is_a_logged_no_op(
    remote: TestClient, service: Service, secrets: None, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(github_payload(ref="refs/heads/feature/x")).encode()
    with caplog.at_level(logging.INFO, logger="dirt"):
        answer = github(remote, body)
    assert answer.status_code == 202
    assert answer.json()["records"] == []
    [line] = answer.json()["ignored"]
    assert "refs/heads/feature/x" in line and "not in [ci] branches (main, release/*)" in line
    assert line in caplog.text
    assert stored(service) == []


def test_a_gitlab_push_with_its_token_is_taken(
    remote: TestClient, service: Service, secrets: None
) -> None:
    body = json.dumps(gitlab_payload(ref="refs/heads/main")).encode()
    answer = remote.post("/hooks/gitlab", content=body, headers=gitlab_headers())
    assert answer.status_code == 202 and answer.json()["records"] == [HEAD]
    wrong = remote.post("/hooks/gitlab", content=body, headers=gitlab_headers("nope"))
    assert wrong.status_code == 401


def test_a_github_ping_is_answered_and_makes_nothing(
    remote: TestClient, service: Service, secrets: None
) -> None:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    answer = remote.post("/hooks/github", content=body, headers=signed(body, event="ping"))
    assert answer.status_code == 202
    assert answer.json()["ignored"] == ["ping: the webhook reaches dirt"]
    assert stored(service) == []


def test_a_body_over_the_limit_is_413(remote: TestClient, secrets: None) -> None:
    body = json.dumps(github_payload(padding="x" * 200_000)).encode()
    assert github(remote, body).status_code == 413


def test_a_push_whose_ci_task_is_missing_is_422_and_can_be_delivered_again(
    remote: TestClient, service: Service, secrets: None
) -> None:
    service.settings.ci.tasks = ["ci.missing"]
    body = json.dumps(github_payload()).encode()
    answer = github(remote, body)
    assert answer.status_code == 422
    assert "task 'ci.missing' is not a module under tasks/" in " ".join(answer.json()["problems"])
    assert stored(service) == []
    service.settings.ci.tasks = ["examples.simple"]
    assert github(remote, body).json()["records"] == [HEAD]  # the delivery was not spent


# ---- the post-receive hook's endpoint ----------------------------------------------------------


def test_the_hook_needs_an_api_token_from_another_machine(
    remote: TestClient, service: Service
) -> None:
    assert remote.post("/hooks/git", content=hook_body()).status_code == 401
    token = service.create_token("git-hook")
    answer = remote.post(
        "/hooks/git",
        content=hook_body(),
        headers={"Authorization": f"Bearer {token}", "X-Dirt-Delivery": "push-1"},
    )
    assert answer.status_code == 202 and answer.json()["records"] == [HOOK_SHA]
    record = service.record(HOOK_SHA)
    assert (record.description, record.extra["ref"]) == ("Add", "refs/heads/main")


def test_a_hook_payload_that_is_not_json_is_400_and_stores_nothing(
    local: TestClient, service: Service
) -> None:
    answer = local.post("/hooks/git", content=b"{not json")
    assert answer.status_code == 400
    assert "the hook's payload is not JSON" in answer.json()["error"]
    assert stored(service) == []


def test_a_retried_hook_delivery_makes_nothing_new(local: TestClient, service: Service) -> None:
    headers = {"X-Dirt-Delivery": "20240505-123"}
    assert local.post("/hooks/git", content=hook_body(), headers=headers).status_code == 202
    again = local.post("/hooks/git", content=hook_body(), headers=headers)
    assert again.json()["replay"] is True
    other = local.post("/hooks/git", content=hook_body(), headers={"X-Dirt-Delivery": "other"})
    assert other.json()["existing"] == [HOOK_SHA]  # a new delivery of a stored commit
    assert len(service.record_detail(HOOK_SHA).tasks) == 1


# ---- pages: the commit of a record, the branch filter ------------------------------------------


def test_a_records_commit_is_linked_with_its_ref_and_author(
    remote: TestClient, local: TestClient, secrets: None
) -> None:
    body = json.dumps(github_payload()).encode()
    github(remote, body)
    page = local.get(f"/records/{HEAD}").text
    assert f'<a href="https://github.com/octo/hello/commit/{HEAD}"' in page
    assert f">{HEAD}</a>" in page
    assert '<a href="/?branch=main"' in page and "refs/heads/main" in page
    assert "Mona &lt;mona@example.org&gt;" in page
    assert "<dt>sha</dt>" not in page and "<dt>changeset_url</dt>" not in page


def test_a_commit_without_a_link_shows_its_sha_as_text(local: TestClient) -> None:
    local.post("/hooks/git", content=hook_body())
    page = local.get(f"/records/{HOOK_SHA}").text
    assert f'<dd class="commit id">{HOOK_SHA}</dd>' in page


def test_the_record_list_is_filtered_by_branch(local: TestClient, service: Service) -> None:
    local.post("/hooks/git", content=hook_body("refs/heads/main", "b" * 40))
    local.post("/hooks/git", content=hook_body("refs/heads/release/2", "c" * 40))
    service.submit([{"_id": "r1", "type": "record"}])
    api = local.get("/api/records?branch=release/2").json()["records"]
    assert [r["_id"] for r in api] == ["c" * 40]
    page = local.get("/?branch=main").text
    assert "b" * 40 in page and "c" * 40 not in page and ">r1<" not in page
    assert 'name="branch" value="main"' in page
    # Each record links its branch (GET / answers a browser with the page, CouchDB clients
    # with its welcome).
    assert 'href="/?branch=release%2F2"' in local.get("/", headers=BROWSER).text
