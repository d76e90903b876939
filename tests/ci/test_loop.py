"""The CI loop through one real `dirt serve`: pushes to a bare repository with the installed
hook, GitHub and GitLab webhooks over TCP, tasks that run, commit statuses, a signed webhook
and a mail that waits for its SMTP server.

One server for the module (it takes a few seconds to start); each test pushes its own
commits, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dirt.notify.webhook import signature
from dirt.sources.webhooks import github_signature
from tests.ci.conftest import BASE_URL, Repository, Server, git_environment, make_project
from tests.conftest import run_dirt, wait_for
from tests.httpstub import HttpStub, Request, free_port
from tests.notify.conftest import SmtpServer
from tests.sources.forge_payloads import github_payload, gitlab_headers, gitlab_payload

GITHUB_SECRET = "It's a Secret to Everybody"
GITLAB_TOKEN = "gitlab-webhook-token"
WEBHOOK_SECRET = "receiver-secret"
SECRETS = {
    "TEST_GITHUB_SECRET": GITHUB_SECRET,
    "TEST_GITLAB_TOKEN": GITLAB_TOKEN,
    "TEST_GITHUB_API_TOKEN": "ghp_test",
    "TEST_GITLAB_API_TOKEN": "glpat-test",
    "TEST_WEBHOOK_SECRET": WEBHOOK_SECRET,
}


@dataclass
class Loop:
    project: Path
    repo: Repository
    server: Server
    smtp: SmtpServer
    stub: HttpStub


def config(smtp_port: int, stub: HttpStub) -> str:
    return f"""
[ci]
tasks = ["ci.test"]
branches = ["main", "release/*"]

[hooks]
github_secret_env = "TEST_GITHUB_SECRET"
gitlab_secret_env = "TEST_GITLAB_TOKEN"

[notify]
backoff_initial = 0.2
backoff_max = 0.4

[notify.email]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
sender = "ci@example.org"
to = ["dev@example.org"]

[notify.github]
api_url = "{stub.url}/github"
repository = "octo/hello"
token_env = "TEST_GITHUB_API_TOKEN"

[notify.gitlab]
api_url = "{stub.url}/gitlab/api/v4"
project = "group/hello"
token_env = "TEST_GITLAB_API_TOKEN"

[[notify.webhook]]
url = "{stub.url}/hook"
secret_env = "TEST_WEBHOOK_SECRET"
events = ["record.finished"]
"""


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    root = tmp_path_factory.mktemp("ci-loop")
    env = git_environment(root / "home")
    smtp = SmtpServer(free_port())  # down until a test starts it
    stub = HttpStub().start()
    project = make_project(root, config(smtp.port, stub))
    made = run_dirt("token", "create", "git-hook", cwd=project)
    assert made.returncode == 0, made.stderr
    repo = Repository(root, env)
    server = Server(project, {**env, **SECRETS})
    url = server.start()
    installed = run_dirt(
        "hook", "install", str(repo.bare), "--url", url, "--token-env", "CI_HOOK_TOKEN"
    )
    assert installed.returncode == 0, installed.stderr
    assert f"each push is posted to {url}/hooks/git" in installed.stdout
    repo.env["CI_HOOK_TOKEN"] = made.stdout.strip()
    try:
        yield Loop(project, repo, server, smtp, stub)
    finally:
        assert server.stop() == 0, server.output()
        smtp.stop()
        stub.stop()


def record_of(loop: Loop, record_id: str) -> dict[str, Any] | None:
    found = loop.server.get("/api/records?limit=500")["records"]
    if not any(r["_id"] == record_id for r in found):
        return None
    detail: dict[str, Any] = loop.server.get(f"/api/records/{record_id}")
    return detail


def finished(loop: Loop, record_id: str) -> dict[str, Any]:
    """The record once its tasks are all finished."""

    def done() -> dict[str, Any] | None:
        detail = record_of(loop, record_id)
        if detail and detail["tasks"] and all(t["completed"] for t in detail["tasks"]):
            return detail
        return None

    found: dict[str, Any] = wait_for(done, 60, 0.05, f"record {record_id} to finish")
    return found


def requests_to(stub: HttpStub, path: str) -> list[Request]:
    return [r for r in list(stub.requests) if r.path == path]


def statuses(stub: HttpStub, path: str, final: str) -> list[Request]:
    """The status requests to `path`, once the last one says `final`."""

    def arrived() -> list[Request] | None:
        found = requests_to(stub, path)
        return found if found and found[-1].json()["state"] == final else None

    found: list[Request] = wait_for(arrived, 30, 0.05, f"{final} at {path}")
    return found


def push_commit(loop: Loop, subject: str, branch: str = "main") -> str:
    sha = loop.repo.commit(subject)
    said = loop.repo.push(f"HEAD:refs/heads/{branch}")
    assert "dirt: sent 1 push(es)" in said
    return sha


# ---- records from pushes ---------------------------------------------------------------------


def test_a_push_makes_a_record_of_its_head_whose_task_runs(loop: Loop) -> None:
    sha = push_commit(loop, "Add the frobnicator")
    detail = finished(loop, sha)
    record = detail["record"]
    assert record["description"] == "Add the frobnicator"
    assert (record["sha"], record["ref"]) == (sha, "refs/heads/main")
    assert record["repository"] == str(loop.repo.bare)
    assert record["author"] == "Ada Lovelace <ada@example.org>"
    [task] = detail["tasks"]
    assert task["name"] == "ci.test" and task["state"] == "succeeded"
    assert task["kwargs"] == {
        "sha": sha,
        "ref": "refs/heads/main",
        "repository": record["repository"],
    }
    assert task["results"]["subject"] == "Add the frobnicator"  # the task read the commit


def test_the_same_commit_on_another_branch_is_still_one_record(loop: Loop) -> None:
    sha = push_commit(loop, "Share this commit")
    finished(loop, sha)
    said = loop.repo.push("HEAD:refs/heads/release/1")
    assert "dirt: sent 1 push(es)" in said
    assert loop.server.get("/api/records?branch=release/1")["records"] == []
    [mine] = [r for r in loop.server.get("/api/records?limit=500")["records"] if r["_id"] == sha]
    assert mine["ref"] == "refs/heads/main" and mine["ntasks"] == 1


def test_a_push_of_a_branch_not_in_branches_is_a_logged_no_op(loop: Loop) -> None:
    before = loop.server.get("/api/records?limit=500")["records"]
    sha = push_commit(loop, "Try something", branch="feature/x")
    assert record_of(loop, sha) is None
    assert loop.server.get("/api/records?limit=500")["records"] == before
    assert "push of refs/heads/feature/x" in loop.server.log()
    assert "not in [ci] branches (main, release/*)" in loop.server.log()


def test_the_record_list_is_filtered_by_branch(loop: Loop) -> None:
    on_release = push_commit(loop, "Release fix", branch="release/2")
    finished(loop, on_release)
    listed = loop.server.get("/api/records?branch=release/2")["records"]
    assert [r["_id"] for r in listed] == [on_release]
    full = loop.server.get("/api/records?branch=refs/heads/release/2")["records"]
    assert [r["_id"] for r in full] == [on_release]


# ---- notifications -----------------------------------------------------------------------------


def test_each_task_gets_github_commit_statuses_pending_then_success(loop: Loop) -> None:
    sha = push_commit(loop, "Statuses for GitHub")
    [task] = finished(loop, sha)["tasks"]
    found = statuses(loop.stub, f"/github/repos/octo/hello/statuses/{sha}", "success")
    # The pending status is superseded when the task finishes before it went out.
    assert [r.json()["state"] for r in found] in (["pending", "success"], ["success"])
    last = found[-1]
    assert last.method == "POST"
    assert last.headers["authorization"] == "Bearer ghp_test"
    assert last.headers["accept"] == "application/vnd.github+json"
    assert last.headers["content-type"] == "application/json"
    assert last.json() == {
        "state": "success",
        "target_url": f"{BASE_URL}/records/{sha}#task-{task['_id']}",
        "description": last.json()["description"],
        "context": "dirt/ci.test",
    }
    assert last.json()["description"].startswith("passed")


def test_each_task_gets_gitlab_commit_statuses_up_to_success(loop: Loop) -> None:
    sha = push_commit(loop, "Statuses for GitLab")
    finished(loop, sha)
    found = statuses(loop.stub, f"/gitlab/api/v4/projects/group%2Fhello/statuses/{sha}", "success")
    states = [r.json()["state"] for r in found]
    assert states == [s for s in ("pending", "running", "success") if s in states]
    last = found[-1]
    assert last.method == "POST" and last.headers["private-token"] == "glpat-test"
    body = last.json()
    assert (body["name"], body["ref"]) == ("dirt/ci.test", "main")
    assert body["target_url"].startswith(f"{BASE_URL}/records/{sha}#task-")


def test_a_finished_record_reaches_the_webhook_signed(loop: Loop) -> None:
    sha = push_commit(loop, "Tell the chat")
    finished(loop, sha)

    def delivered() -> Request | None:
        for request in requests_to(loop.stub, "/hook"):
            if request.json()["record"]["_id"] == sha:
                return request
        return None

    request: Request = wait_for(delivered, 30, 0.05, "the record.finished webhook")
    assert request.headers["x-dirt-event"] == "record.finished"
    assert request.headers["x-dirt-signature-256"] == signature(WEBHOOK_SECRET, request.body)
    body = request.json()
    assert body["delivery"] == request.headers["x-dirt-delivery"]
    assert (body["outcome"], body["url"]) == ("passed", f"{BASE_URL}/records/{sha}")


def outbox_empty(loop: Loop) -> bool:
    listed = run_dirt("notify", "list", "--json", cwd=loop.project)
    counts = json.loads(listed.stdout)["counts"]
    return bool(counts["pending"] + counts["sending"] == 0)


def test_a_failing_commit_is_mailed_once_when_the_smtp_server_comes_up(loop: Loop) -> None:
    sha = push_commit(loop, "FAIL the frobnicator")
    [task] = finished(loop, sha)["tasks"]
    assert task["state"] == "failed"

    def refused_mail() -> dict[str, Any] | None:
        listed = run_dirt("notify", "list", "--json", cwd=loop.project)
        assert listed.returncode == 0, listed.stderr
        for row in json.loads(listed.stdout)["notifications"]:
            if row["channel"] == "email" and row["record_id"] == sha and row["attempts"] >= 2:
                return dict(row)
        return None

    waiting = wait_for(refused_mail, 30, 0.1, "the mail to be tried while SMTP is down")
    assert waiting["state"] in ("pending", "sending")
    assert "refused" in (waiting["last_error"] or "").lower()
    loop.smtp.start()
    wait_for(lambda: loop.smtp.inbox.messages, 30, 0.05, "the mail")
    wait_for(lambda: outbox_empty(loop), 10, 0.1, "the outbox to empty")
    assert len(loop.smtp.inbox.messages) == 1
    [message] = loop.smtp.inbox.messages
    assert (
        message["Subject"] == f"[proj] {sha[:10]} on main: 1 of 1 task failed: FAIL the frobnicator"
    )
    assert (message["From"], message["To"]) == ("ci@example.org", "dev@example.org")
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "FAIL the frobnicator: 1 test failed" in text.get_content()
    assert f"{BASE_URL}/records/{sha}" in text.get_content()
    assert f'href="{BASE_URL}/records/{sha}"' in html.get_content()


# ---- forge webhooks over TCP -----------------------------------------------------------------


def github_body(sha: str, ref: str = "refs/heads/main") -> bytes:
    head = {
        "id": sha,
        "message": "Merge the frobnicator\n\nlong text",
        "timestamp": "2024-05-05T19:41:00Z",
        "url": f"https://github.com/octo/hello/commit/{sha}",
        "author": {"name": "Mona", "email": "mona@example.org"},
    }
    payload = github_payload(ref=ref, after=sha, head_commit=head, commits=[head])
    return json.dumps(payload).encode()


def github_headers(body: bytes, delivery: str, secret: str = GITHUB_SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": github_signature(secret, body),
    }


def new_sha() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


def test_a_github_push_is_taken_within_a_second_and_its_replay_makes_nothing(loop: Loop) -> None:
    sha = new_sha()
    body = github_body(sha)
    headers = github_headers(body, str(uuid.uuid4()))
    status, answer, took = loop.server.post("/hooks/github", body, headers)
    assert (status, answer["records"], answer["replay"]) == (202, [sha], False)
    assert took < 1.0
    record = finished(loop, sha)["record"]
    assert record["description"] == "Merge the frobnicator"
    assert record["changeset_url"] == f"https://github.com/octo/hello/commit/{sha}"
    assert record["repository"] == "https://github.com/octo/hello.git"
    count = len(loop.server.get("/api/records?limit=500")["records"])
    status, answer, _ = loop.server.post("/hooks/github", body, headers)
    assert (status, answer["records"], answer["replay"]) == (202, [], True)
    assert len(loop.server.get("/api/records?limit=500")["records"]) == count


def test_a_forged_github_push_is_401_and_makes_nothing(loop: Loop) -> None:
    sha = new_sha()
    body = github_body(sha)
    forged = github_headers(body, str(uuid.uuid4()), secret="a guess")
    status, answer, _ = loop.server.post("/hooks/github", body, forged)
    assert status == 401 and "does not match" in answer["error"]
    assert record_of(loop, sha) is None


def test_a_github_delivery_that_is_not_json_is_400_and_makes_nothing(loop: Loop) -> None:
    before = loop.server.get("/api/records?limit=500")["records"]
    body = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D"
    status, answer, _ = loop.server.post("/hooks/github", body, github_headers(body, "x-1"))
    assert status == 400 and "not JSON" in answer["error"]
    assert loop.server.get("/api/records?limit=500")["records"] == before


def test_a_gitlab_push_is_taken_with_its_token(loop: Loop) -> None:
    sha = new_sha()
    commit = {
        "id": sha,
        "message": "Port to GitLab",
        "title": "Port to GitLab",
        "timestamp": "2024-01-04T10:00:00+02:00",
        "url": f"https://gitlab.example.org/group/hello/-/commit/{sha}",
        "author": {"name": "Jordi", "email": "jordi@example.org"},
    }
    payload = gitlab_payload(ref="refs/heads/main", after=sha, checkout_sha=sha, commits=[commit])
    body = json.dumps(payload).encode()
    wrong = {**gitlab_headers("not the token"), "Content-Type": "application/json"}
    assert loop.server.post("/hooks/gitlab", body, wrong)[0] == 401
    right = {**gitlab_headers(GITLAB_TOKEN), "Idempotency-Key": str(uuid.uuid4())}
    status, answer, took = loop.server.post("/hooks/gitlab", body, right)
    assert (status, answer["records"]) == (202, [sha]) and took < 1.0
    assert finished(loop, sha)["record"]["author"] == "Jordi <jordi@example.org>"


def test_the_record_page_links_the_commit_and_shows_ref_and_author(loop: Loop) -> None:
    sha = new_sha()
    body = github_body(sha)
    assert (
        loop.server.post("/hooks/github", body, github_headers(body, str(uuid.uuid4())))[0] == 202
    )
    import urllib.request

    with urllib.request.urlopen(f"{loop.server.url}/records/{sha}", timeout=10) as response:
        page = response.read().decode()
    assert f'href="https://github.com/octo/hello/commit/{sha}"' in page
    assert f">{sha}</a>" in page
    assert 'href="/?branch=main"' in page and "refs/heads/main" in page
    assert "Mona &lt;mona@example.org&gt;" in page
