"""Which notification rows each event makes, for the channels configured."""

from __future__ import annotations

from itertools import count
from typing import Any

from dirt.ci_config import (
    EmailSettings,
    GithubSettings,
    GitlabSettings,
    NotifySettings,
    WebhookSettings,
)
from dirt.models import TaskState
from dirt.notify.plan import Planner
from tests.notify.conftest import BASE_URL, SHA, git_record, task

HOOK_ALL = WebhookSettings(
    url="https://hooks.example.org/all", events=["record.finished", "task.finished"]
)
HOOK_RECORDS = WebhookSettings(url="https://hooks.example.org/records")


def planner(**channels: Any) -> Planner:
    ids = count(1)
    return Planner(
        NotifySettings(**channels),
        project="hello",
        base_url=BASE_URL,
        new_id=lambda: f"id{next(ids)}",
        hostname="dirt.example.org",
    )


def test_a_new_task_makes_a_pending_github_status_keyed_by_commit_and_context() -> None:
    [row] = planner(github=GithubSettings(token_env="T")).task_created(
        git_record(), [task("ci.test", TaskState.WAITING)]
    )
    assert (row.kind, row.channel, row.record_id, row.task_id) == (
        "task.created",
        "github",
        SHA,
        "t-ci.test",
    )
    assert row.key == f"github:octo/hello:{SHA}:dirt/ci.test"
    assert row.payload["body"]["state"] == "pending"


def test_a_record_that_is_no_commit_makes_no_status() -> None:
    rows = planner(github=GithubSettings(token_env="T")).task_created(
        git_record(sha=None), [task("ci.test", TaskState.WAITING)]
    )
    assert rows == []


def test_a_started_task_tells_gitlab_it_runs_and_leaves_github_pending() -> None:
    record = git_record(repository="https://gitlab.com/mike/diaspora.git", project="mike/diaspora")
    rows = planner(
        github=GithubSettings(token_env="T", repository="octo/hello"),
        gitlab=GitlabSettings(token_env="T"),
    ).task_started(record, task("ci.test", TaskState.RUNNING))
    assert [(r.channel, r.payload["body"]["state"]) for r in rows] == [("gitlab", "running")]


def test_a_finished_task_makes_its_final_status_and_the_webhooks_that_want_it() -> None:
    rows = planner(
        github=GithubSettings(token_env="T"), webhook=[HOOK_ALL, HOOK_RECORDS]
    ).task_finished(git_record(), task("ci.test", TaskState.FAILED, "boom"))
    assert [(r.channel, r.target) for r in rows] == [("github", ""), ("webhook", HOOK_ALL.url)]
    assert rows[0].payload["body"]["state"] == "failure"
    body = rows[1].payload["body"]
    assert (body["event"], body["task"]["name"], body["delivery"]) == (
        "task.finished",
        "ci.test",
        rows[1].payload["delivery"],
    )


def test_a_failed_record_makes_one_email() -> None:
    email = EmailSettings(to=["dev@example.org"], sender="ci@example.org")
    tasks = [task("ci.build", TaskState.SUCCEEDED), task("ci.test", TaskState.FAILED, "boom")]
    [row] = planner(email=email).record_finished(git_record(), tasks, previous="passed")
    assert (row.kind, row.channel, row.record_id) == ("record.finished", "email", SHA)
    assert row.payload["to"] == ["dev@example.org"]
    assert row.payload["sender"] == "ci@example.org"
    assert row.payload["message_id"] == "<dirt.id1@dirt.example.org>"
    assert "1 of 2 tasks failed" in row.payload["subject"]


def test_a_passing_record_is_not_mailed_when_only_failures_are_wanted() -> None:
    email = EmailSettings(to=["dev@example.org"])
    rows = planner(email=email).record_finished(
        git_record(), [task("ci.build", TaskState.SUCCEEDED)], previous="failed"
    )
    assert rows == []


def test_a_finished_record_goes_to_every_webhook_wanting_records() -> None:
    rows = planner(webhook=[HOOK_ALL, HOOK_RECORDS]).record_finished(
        git_record(), [task("ci.build", TaskState.SUCCEEDED)], previous=None
    )
    assert [r.target for r in rows] == [HOOK_ALL.url, HOOK_RECORDS.url]
    body = rows[0].payload["body"]
    assert (body["outcome"], body["record"]["_id"], body["url"]) == (
        "passed",
        SHA,
        f"{BASE_URL}/records/{SHA}",
    )


def test_the_test_event_reaches_every_email_and_webhook_channel() -> None:
    rows = planner(email=EmailSettings(to=["a@example.org"]), webhook=[HOOK_RECORDS]).test()
    assert [(r.kind, r.channel) for r in rows] == [("test", "email"), ("test", "webhook")]
