"""Which notification rows each change writes, in the change's own transaction, on SQLite and
a real PostgreSQL: statuses per task, the record's mail and webhook once its last task is done,
and nothing at all when no channel is configured."""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Any

import pytest

from dirt.ci_config import NotifySettings
from dirt.couch import edits
from dirt.couch.docs import content_of
from dirt.couch.store import CouchStore
from dirt.db import outbox
from dirt.db import sources as sources_db
from dirt.db.engine import write_transaction
from dirt.errors import SubmissionError
from dirt.models import Finished, TaskState
from dirt.service import Service

SHA = "1481a2de7b2a7d02428ad93446ab166be7793fbb"


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    return {
        "log": {"file": ""},
        "web": {"base_url": "https://dirt.example.org"},
        "notify": {
            "email": {"to": ["dev@example.org"], "sender": "ci@example.org"},
            "github": {"repository": "octo/hello", "token_env": "GH_TOKEN"},
            "gitlab": {"project": "group/hello", "token_env": "GL_TOKEN"},
            "webhook": [{"url": "https://chat.example.org/hook", "events": ["task.finished"]}],
        },
    }


def commit(store: Service, sha: str = SHA, tasks: int = 1, **task: Any) -> list[str]:
    """A record of commit `sha` on main with `tasks` tasks; their ids."""
    docs: list[dict[str, Any]] = [
        {
            "_id": sha,
            "type": "record",
            "description": "Add the frobnicator",
            "sha": sha,
            "ref": "refs/heads/main",
            "repository": "https://github.com/octo/hello.git",
        }
    ]
    docs += [
        {
            "_id": f"{sha[-6:]}-t{i}",
            "type": "task",
            "record_id": sha,
            "name": "examples.simple",
            **task,
        }
        for i in range(tasks)
    ]
    return [t.id for t in store.submit(docs).tasks]


def start(store: Service, task_id: str) -> int:
    """Reserve and start the task on node n1, as a dispatcher does; its attempt number."""
    store.dispatch([], [], [task_id])
    attempt = store.task(task_id).attempts + 1
    assert store.dispatch([], [(task_id, "n1", time.time(), attempt)], []) == ([task_id], [])
    return attempt


def finish(store: Service, task_id: str, state: TaskState = TaskState.SUCCEEDED) -> None:
    attempt = start(store, task_id)
    results = {"success": state is TaskState.SUCCEEDED}
    reason = None if state is TaskState.SUCCEEDED else "assert 1 == 2"
    done = Finished(task_id, attempt, "n1", state, results, reason, None)
    store.dispatch([done], [], [])


def rows(store: Service, channel: str | None = None, kind: str | None = None) -> list[Any]:
    found = reversed(store.notifications(outbox.STATES, 1000))
    return [
        n
        for n in found
        if (channel is None or n.channel == channel) and (kind is None or n.kind == kind)
    ]


def states(store: Service, channel: str) -> list[str]:
    return [n.payload["body"]["state"] for n in rows(store, channel)]


@pytest.fixture
def node(store: Service) -> str:
    store.save_node("n1", {"cpu_count": 4, "platform": "linux"})
    return "n1"


def test_without_a_channel_a_whole_run_writes_no_row(store: Service, node: str) -> None:
    quiet = Service(dataclasses.replace(store.settings, notify=NotifySettings()), store.engine)
    assert quiet.planner is None
    [task_id] = commit(quiet)
    finish(quiet, task_id, TaskState.FAILED)
    quiet.retry_task(task_id)
    quiet.cancel_task(task_id)
    assert rows(store) == []


def test_a_submitted_task_gets_a_pending_status_on_each_forge(store: Service) -> None:
    [task_id] = commit(store)
    [github] = rows(store, "github")
    assert (github.kind, github.task_id, github.record_id) == ("task.created", task_id, SHA)
    assert github.payload == {
        "repository": "octo/hello",
        "sha": SHA,
        "body": {
            "state": "pending",
            "target_url": f"https://dirt.example.org/records/{SHA}#task-{task_id}",
            "description": "waiting for a node",
            "context": "dirt/examples.simple",
        },
    }
    assert states(store, "gitlab") == ["pending"]
    assert rows(store, "email") == [] and rows(store, "webhook") == []


def test_a_started_task_is_running_on_gitlab_and_still_pending_on_github(
    store: Service, node: str
) -> None:
    [task_id] = commit(store)
    start(store, task_id)
    assert states(store, "gitlab") == ["pending", "running"]
    assert states(store, "github") == ["pending"]


def test_a_passing_record_gets_success_statuses_its_webhook_and_no_mail(
    store: Service, node: str
) -> None:
    [task_id] = commit(store)
    finish(store, task_id)
    assert states(store, "github")[-1] == "success"
    assert states(store, "gitlab")[-1] == "success"
    [hook] = rows(store, "webhook")
    assert hook.payload["body"]["task"]["state"] == "succeeded"
    assert rows(store, "email") == []  # when = "failing"


def test_a_failing_record_is_mailed_once_its_last_task_is_done(store: Service, node: str) -> None:
    first, second = commit(store, tasks=2)
    finish(store, first, TaskState.FAILED)
    assert rows(store, "email") == []  # the record still has a task to run
    assert states(store, "github")[-1] == "failure"
    finish(store, second)
    [mail] = rows(store, "email")
    assert mail.kind == "record.finished" and mail.record_id == SHA
    assert mail.payload["to"] == ["dev@example.org"]
    assert (
        mail.payload["subject"]
        == "[proj] 1481a2de7b on main: 1 of 2 tasks failed: Add the frobnicator"
    )


def test_problem_mails_when_a_branch_turns_failing_only(store: Service, node: str) -> None:
    assert store.settings.notify.email is not None
    store.settings.notify.email.when = "problem"
    outcomes = [TaskState.FAILED, TaskState.FAILED, TaskState.SUCCEEDED, TaskState.FAILED]
    mailed = []
    for index, outcome in enumerate(outcomes):
        sha = f"{index:040x}"
        [task_id] = commit(store, sha)
        finish(store, task_id, outcome)
        mailed.append(bool(rows(store, "email")) and rows(store, "email")[-1].record_id == sha)
    assert mailed == [True, False, False, True]


def test_a_cancelled_waiting_task_is_an_error_on_github(store: Service) -> None:
    [task_id] = commit(store)
    store.cancel_task(task_id)
    assert states(store, "github") == ["pending", "error"]
    assert states(store, "gitlab") == ["pending", "canceled"]
    assert len(rows(store, "email", "record.finished")) == 0  # cancelled, not failed


def test_a_retried_task_is_pending_again(store: Service, node: str) -> None:
    [task_id] = commit(store)
    finish(store, task_id, TaskState.FAILED)
    store.retry_task(task_id)
    assert states(store, "github") == ["pending", "failure", "pending"]


def test_a_task_that_lost_every_node_it_had_is_an_error(store: Service, node: str) -> None:
    [task_id] = commit(store, max_attempts=1)
    attempt = start(store, task_id)
    assert store.requeue([(task_id, attempt)], "node n1 lost", node_lost=True) == ([], [task_id])
    [*_, final] = rows(store, "github")
    assert final.payload["body"]["state"] == "error"
    assert final.payload["body"]["description"].startswith("lost: node n1 lost")


def test_a_task_that_can_never_run_is_a_failure(store: Service) -> None:
    [task_id] = commit(store)
    assert store.fail_unrunnable(task_id, "tasks/examples/simple.py is gone")
    assert states(store, "github") == ["pending", "failure"]
    assert len(rows(store, "email")) == 1


def test_a_rejected_submission_writes_no_row(store: Service) -> None:
    docs = [
        {"_id": SHA, "type": "record", "sha": SHA, "ref": "refs/heads/main"},
        {"type": "task", "record_id": SHA, "name": "no.such.task"},
    ]
    with pytest.raises(SubmissionError):
        store.submit_new(docs)
    assert rows(store) == []


def test_the_outbox_listener_hears_of_rows_once_they_are_committed(
    store: Service, node: str
) -> None:
    heard: list[int] = []
    store.add_outbox_listener(lambda: heard.append(len(rows(store))))
    commit(store)
    assert heard == [2]  # the two pending statuses, readable when the listener runs
    store.set_node_enabled(node, False)
    assert heard == [2]  # a write without rows wakes nobody


def test_rows_a_dead_sender_on_this_host_held_are_due_again_at_start(store: Service) -> None:
    now = time.time()
    mine, theirs = (
        outbox.NewNotification("record.finished", "email", {"subject": s}) for s in "ab"
    )
    with write_transaction(store.engine) as conn:
        dead_id, alive_id = outbox.insert_notifications(conn, [mine, theirs], now)
        dead = f"{socket.gethostname()}:{2**22 + 12345}:gone"  # no such pid
        outbox.claim_due(conn, dead, now, 600, limit=1)
        outbox.claim_due(conn, store.master_id, now, 600, limit=1)
    assert store.release_dead_claims(now) == 1
    by_id = {n.id: n for n in store.notifications(outbox.STATES)}
    assert (by_id[dead_id].state, by_id[alive_id].state) == ("pending", "sending")


def test_links_follow_the_port_the_server_took_unless_base_url_is_set(store: Service) -> None:
    assert store.planner is not None
    store.serving_at("http://build.example.org:41234/")
    assert store.planner.base_url == "https://dirt.example.org"  # [web] base_url wins
    store.settings.web.base_url = ""
    store.serving_at("http://build.example.org:41234/")
    assert store.planner.base_url == "http://build.example.org:41234"


def test_old_sent_rows_and_delivery_ids_are_purged(store: Service) -> None:
    old, recent = 1_000.0, time.time()
    rows_made = [outbox.NewNotification("test", "email", {"subject": s}) for s in "abc"]
    with write_transaction(store.engine) as conn:
        sent, failed, pending = outbox.insert_notifications(conn, rows_made, old)
        outbox.claim_due(conn, "me", old, 600, limit=2)
        outbox.mark_sent(conn, sent, "me", old)
        outbox.mark_failed(conn, failed, "me", "550", old)
        sources_db.remember_delivery(conn, "github", "old", old)
        sources_db.remember_delivery(conn, "github", "new", recent)
    assert store.purge_outbox(recent - 3600) == (1, 1)
    assert {n.id for n in store.notifications(outbox.STATES)} == {failed, pending}


def test_a_cancel_or_retry_over_the_couchdb_api_writes_its_rows(store: Service, node: str) -> None:
    couch = CouchStore(store)
    [task_id] = commit(store)
    doc = couch.get(task_id)
    assert doc is not None
    edits.update(couch, task_id, {**content_of(doc.model), "state": "cancelled"}, doc.rev)
    assert states(store, "github") == ["pending", "error"]
    doc = couch.get(task_id)
    assert doc is not None
    edits.update(couch, task_id, {**content_of(doc.model), "state": "waiting"}, doc.rev)
    assert states(store, "github") == ["pending", "error", "pending"]
