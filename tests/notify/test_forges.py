"""Commit statuses: the requests GitHub's and GitLab's APIs get, checked on a loopback server."""

from __future__ import annotations

import time

import pytest

from dirt.ci_config import GithubSettings, GitlabSettings
from dirt.db.outbox import Notification
from dirt.models import Record, TaskState
from dirt.notify.base import PermanentFailure, TemporaryFailure
from dirt.notify.forges import (
    GithubChannel,
    GitlabChannel,
    github_repository,
    github_status,
    gitlab_project,
    gitlab_status,
)
from tests.httpstub import HttpStub, free_port
from tests.notify.conftest import BASE_URL, SHA, git_record, task

ENV = {"GH_TOKEN": "ghp_secret", "GL_TOKEN": "glpat-secret"}


def github(stub: HttpStub, **options: str) -> GithubSettings:
    return GithubSettings(api_url=stub.url, token_env="GH_TOKEN", **options)


def gitlab(stub: HttpStub, **options: str) -> GitlabSettings:
    return GitlabSettings(api_url=f"{stub.url}/api/v4", token_env="GL_TOKEN", **options)


def row(channel: str, payload: dict) -> Notification:
    return Notification(7, "task.finished", channel, payload, "sending", 1, 0.0, 0.0)


def send_github(stub: HttpStub, state: TaskState, lost: bool = False, **kw: str) -> dict:
    settings = github(stub, **kw)
    record = git_record(repository=f"{stub.url}/octo/hello.git")
    found = github_status(settings, record, task("ci.test", state, "boom"), BASE_URL, lost)
    assert found is not None
    GithubChannel(settings, ENV).send(row("github", found[1]))
    return stub.wait_for(1)[-1].json()


def test_a_github_status_is_posted_as_documented(stub: HttpStub) -> None:
    settings = github(stub)
    record = git_record(repository=f"{stub.url}/octo/hello.git")
    _, payload = github_status(settings, record, task("ci.test", TaskState.WAITING), BASE_URL)
    GithubChannel(settings, ENV).send(row("github", payload))
    [request] = stub.wait_for(1)
    assert (request.method, request.path) == ("POST", f"/repos/octo/hello/statuses/{SHA}")
    assert request.headers["authorization"] == "Bearer ghp_secret"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "state": "pending",
        "target_url": f"{BASE_URL}/records/{SHA}#task-t-ci.test",
        "description": "waiting for a node",
        "context": "dirt/ci.test",
    }


@pytest.mark.parametrize(
    ("state", "lost", "expected"),
    [
        (TaskState.SUCCEEDED, False, "success"),
        (TaskState.FAILED, False, "failure"),
        (TaskState.FAILED, True, "error"),
        (TaskState.CANCELLED, False, "error"),
    ],
)
def test_github_states_follow_the_task(
    stub: HttpStub, state: TaskState, lost: bool, expected: str
) -> None:
    assert send_github(stub, state, lost)["state"] == expected


def test_the_github_context_is_configurable(stub: HttpStub) -> None:
    assert send_github(stub, TaskState.SUCCEEDED, context="ci")["context"] == "ci/ci.test"


def test_a_long_reason_is_clipped_to_what_github_takes() -> None:
    settings = GithubSettings(token_env="T")
    found = github_status(
        settings, git_record(), task("ci.test", TaskState.FAILED, "x" * 500), BASE_URL
    )
    assert found is not None and len(found[1]["body"]["description"]) == 140


def test_the_repository_comes_from_the_record_on_github() -> None:
    settings = GithubSettings(token_env="T")
    assert github_repository(settings, git_record()) == "octo/hello"
    ssh = git_record(repository="git@github.com:octo/other.git", project=None)
    assert github_repository(settings, ssh) == "octo/other"


def test_a_record_from_elsewhere_gets_no_github_status() -> None:
    settings = GithubSettings(token_env="T")
    record = git_record(repository="https://gitlab.com/mike/diaspora.git")
    assert github_status(settings, record, task("a", TaskState.WAITING), BASE_URL) is None


def test_a_record_without_a_commit_gets_no_status() -> None:
    settings = GithubSettings(token_env="T", repository="octo/hello")
    record = git_record(sha=None)
    assert github_status(settings, record, task("a", TaskState.WAITING), BASE_URL) is None


def test_a_github_5xx_is_temporary(stub: HttpStub) -> None:
    stub.answer_next(502, b'{"message": "Server Error"}')
    with pytest.raises(TemporaryFailure, match="HTTP 502"):
        send_github(stub, TaskState.SUCCEEDED)


def test_a_github_422_is_final_and_says_why(stub: HttpStub) -> None:
    stub.answer_next(422, b'{"message": "No commit found for SHA: 1481a2de"}')
    with pytest.raises(PermanentFailure, match="No commit found for SHA"):
        send_github(stub, TaskState.SUCCEEDED)


def test_a_github_rate_limit_is_retried_after_the_reset(stub: HttpStub) -> None:
    reset = str(int(time.time()) + 600)
    stub.answer_next(403, b"{}", **{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
    with pytest.raises(TemporaryFailure) as info:
        send_github(stub, TaskState.SUCCEEDED)
    assert info.value.retry_after is not None and 590 < info.value.retry_after <= 600


def test_a_429_is_retried_after_retry_after(stub: HttpStub) -> None:
    stub.answer_next(429, b"{}", **{"Retry-After": "120"})
    with pytest.raises(TemporaryFailure) as info:
        send_github(stub, TaskState.SUCCEEDED)
    assert info.value.retry_after == 120


def test_an_api_that_is_down_is_temporary() -> None:
    settings = GithubSettings(api_url=f"http://127.0.0.1:{free_port()}", token_env="GH_TOKEN")
    payload = {"repository": "octo/hello", "sha": SHA, "body": {}}
    with pytest.raises(TemporaryFailure, match="refused"):
        GithubChannel(settings, ENV).send(row("github", payload))


def test_a_redirect_is_final_not_followed(stub: HttpStub) -> None:
    stub.answer_next(301, b"", Location="https://elsewhere.example.org/")
    with pytest.raises(PermanentFailure, match="redirected to https://elsewhere"):
        send_github(stub, TaskState.SUCCEEDED)
    assert len(stub.requests) == 1


def test_an_unset_token_variable_is_retried_later(stub: HttpStub) -> None:
    settings = github(stub)
    payload = {"repository": "octo/hello", "sha": SHA, "body": {}}
    with pytest.raises(TemporaryFailure, match=r"\$GH_TOKEN is not set"):
        GithubChannel(settings, {}).send(row("github", payload))


def test_the_github_check_reads_the_repository(stub: HttpStub) -> None:
    stub.status = 200
    GithubChannel(github(stub, repository="octo/hello"), ENV).check()
    assert (stub.requests[0].method, stub.requests[0].path) == ("GET", "/repos/octo/hello")


def gitlab_record(stub: HttpStub) -> Record:
    return git_record(repository=f"{stub.url}/mike/diaspora.git", project="mike/diaspora")


def test_a_gitlab_status_is_posted_as_documented(stub: HttpStub) -> None:
    settings = gitlab(stub)
    found = gitlab_status(
        settings, gitlab_record(stub), task("ci.test", TaskState.RUNNING), BASE_URL
    )
    assert found is not None
    GitlabChannel(settings, ENV).send(row("gitlab", found[1]))
    [request] = stub.wait_for(1)
    assert (request.method, request.path) == (
        "POST",
        f"/api/v4/projects/mike%2Fdiaspora/statuses/{SHA}",
    )
    assert request.headers["private-token"] == "glpat-secret"
    assert request.json() == {
        "state": "running",
        "name": "dirt/ci.test",
        "target_url": f"{BASE_URL}/records/{SHA}#task-t-ci.test",
        "description": "running on build1",
        "ref": "main",
    }


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (TaskState.WAITING, "pending"),
        (TaskState.SUCCEEDED, "success"),
        (TaskState.FAILED, "failed"),
        (TaskState.CANCELLED, "canceled"),
    ],
)
def test_gitlab_states_follow_the_task(stub: HttpStub, state: TaskState, expected: str) -> None:
    found = gitlab_status(gitlab(stub), gitlab_record(stub), task("ci.test", state), BASE_URL)
    assert found is not None and found[1]["body"]["state"] == expected


def test_a_configured_gitlab_project_id_is_used(stub: HttpStub) -> None:
    settings = gitlab(stub, project="15")
    _, payload = gitlab_status(settings, git_record(), task("ci.test", TaskState.WAITING), BASE_URL)
    GitlabChannel(settings, ENV).send(row("gitlab", payload))
    assert stub.wait_for(1)[0].path == f"/api/v4/projects/15/statuses/{SHA}"


def test_a_gitlab_under_a_path_finds_the_project_in_the_clone_url() -> None:
    settings = GitlabSettings(api_url="https://example.org/gitlab/api/v4", token_env="T")
    record = git_record(repository="https://example.org/gitlab/group/sub/proj.git")
    assert gitlab_project(settings, record) == "group/sub/proj"


def test_gitlab_refusing_a_status_it_already_has_is_not_a_failure(stub: HttpStub) -> None:
    stub.answer_next(400, b'{"message": "Cannot transition status via :run from :running"}')
    settings = gitlab(stub)
    payload = {"project": "mike/diaspora", "sha": SHA, "body": {"state": "running"}}
    GitlabChannel(settings, ENV).send(row("gitlab", payload))


def test_a_gitlab_404_is_final(stub: HttpStub) -> None:
    stub.answer_next(404, b'{"message": "404 Project Not Found"}')
    payload = {"project": "mike/diaspora", "sha": SHA, "body": {"state": "running"}}
    with pytest.raises(PermanentFailure, match="404 Project Not Found"):
        GitlabChannel(gitlab(stub), ENV).send(row("gitlab", payload))
