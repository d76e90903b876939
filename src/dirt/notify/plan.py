"""Which notification rows a change makes. Pure: the service calls these inside the write
transaction of the change and inserts what they return (`db.outbox.insert_notifications`).

- a task is created (submit, retry): a `pending` commit status per forge;
- a task starts running: GitLab's `running` (GitHub has no such state; its status stays
  pending);
- a task finishes (succeeded, failed, cancelled, or failed for good after lost nodes): the
  final commit status per forge, and `task.finished` to each webhook that wants it;
- a record finishes (its last unfinished task did): the email, when `[notify.email] when`
  says so, and `record.finished` to each webhook that wants it.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from dirt.ci_config import NotifySettings
from dirt.db.outbox import NewNotification
from dirt.models import Record, Task, TaskState
from dirt.notify.email import render_record_email
from dirt.notify.forges import github_status, gitlab_status
from dirt.notify.links import record_url, task_url

PASSED, FAILED, CANCELLED = "passed", "failed", "cancelled"


def record_outcome(tasks: Sequence[Task]) -> str:
    """failed when any task failed, else cancelled when any was, else passed."""
    states = {t.state for t in tasks}
    if TaskState.FAILED in states:
        return FAILED
    if TaskState.CANCELLED in states:
        return CANCELLED
    return PASSED


def should_email(when: str, outcome: str, previous: str | None) -> bool:
    """`[notify.email] when` over this record's outcome and the previous one of its branch.

    failing: this record failed. problem: it failed and the previous did not (the first
    record of a branch failing counts). change: the outcome differs from the previous one (a
    first record counts only when it failed). always: every finished record.
    """
    if when == "always":
        return True
    if when == "failing":
        return outcome == FAILED
    if when == "problem":
        return outcome == FAILED and previous != FAILED
    if when == "change":
        return outcome != previous if previous is not None else outcome == FAILED
    raise ValueError(f"unknown [notify.email] when {when!r}")


def _new_id() -> str:
    return uuid.uuid4().hex


class Planner:
    """Turns events into notification rows for the channels `notify` configures."""

    def __init__(
        self,
        notify: NotifySettings,
        *,
        project: str,
        base_url: str,
        new_id: Callable[[], str] = _new_id,
        hostname: str | None = None,
    ) -> None:
        self.notify = notify
        self.project = project
        self.base_url = base_url
        self.new_id = new_id
        self.hostname = hostname or socket.getfqdn() or "localhost"

    # ---- events ---------------------------------------------------------------------------

    def task_created(self, record: Record, tasks: Sequence[Task]) -> list[NewNotification]:
        return [n for task in tasks for n in self._statuses("task.created", record, task)]

    def task_started(self, record: Record, task: Task) -> list[NewNotification]:
        return self._statuses("task.started", record, task, github=False)

    def task_finished(
        self, record: Record, task: Task, *, lost: bool = False
    ) -> list[NewNotification]:
        """`lost`: the task failed because every node it was given was lost (GitHub: error)."""
        found = self._statuses("task.finished", record, task, lost=lost)
        body = {
            "event": "task.finished",
            "project": self.project,
            "record": record.to_doc(),
            "task": task.to_doc(),
            "url": task_url(self.base_url, record.id, task.id),
        }
        found += self._webhooks("task.finished", body, record.id, task.id)
        return found

    def record_finished(
        self, record: Record, tasks: Sequence[Task], previous: str | None
    ) -> list[NewNotification]:
        """`previous`: the outcome of the branch's last finished record (db.branches), or None."""
        outcome = record_outcome(tasks)
        found: list[NewNotification] = []
        email = self.notify.email
        if email is not None and should_email(email.when, outcome, previous):
            content = render_record_email(
                record, tasks, project=self.project, base_url=self.base_url, previous=previous
            )
            payload = {
                "sender": email.sender,
                "to": list(email.to),
                "subject": content.subject,
                "text": content.text,
                "html": content.html,
                "message_id": f"<dirt.{self.new_id()}@{self.hostname}>",
            }
            found.append(NewNotification("record.finished", "email", payload, record_id=record.id))
        body = {
            "event": "record.finished",
            "project": self.project,
            "record": record.to_doc(),
            "tasks": [t.to_doc() for t in tasks],
            "outcome": outcome,
            "previous": previous,
            "url": record_url(self.base_url, record.id),
        }
        found += self._webhooks("record.finished", body, record.id, None)
        return found

    def test(self) -> list[NewNotification]:
        """`dirt notify test`: one message per configured email and webhook channel (the
        forges are checked with a read instead: a status needs a real commit)."""
        found: list[NewNotification] = []
        email = self.notify.email
        if email is not None:
            text = (
                f"This is a test message from dirt ({self.project}).\n"
                f"Notifications link to {self.base_url or '(no [web] base_url set)'}.\n"
            )
            payload = {
                "sender": email.sender,
                "to": list(email.to),
                "subject": f"[{self.project}] test message from dirt",
                "text": text,
                "html": "",
                "message_id": f"<dirt.{self.new_id()}@{self.hostname}>",
            }
            found.append(NewNotification("test", "email", payload))
        body = {"event": "test", "project": self.project, "sent": time.time()}
        found += [self._webhook("test", body, hook.url) for hook in self.notify.webhook]
        return found

    # ---- channels -------------------------------------------------------------------------

    def _statuses(
        self, kind: str, record: Record, task: Task, *, github: bool = True, lost: bool = False
    ) -> list[NewNotification]:
        found: list[NewNotification] = []
        statuses: list[tuple[str, tuple[str, dict[str, Any]] | None]] = []
        if github and self.notify.github is not None:
            statuses.append(
                ("github", github_status(self.notify.github, record, task, self.base_url, lost))
            )
        if self.notify.gitlab is not None:
            statuses.append(
                ("gitlab", gitlab_status(self.notify.gitlab, record, task, self.base_url, lost))
            )
        for channel, status in statuses:
            if status is not None:
                key, payload = status
                found.append(
                    NewNotification(
                        kind, channel, payload, key=key, record_id=record.id, task_id=task.id
                    )
                )
        return found

    def _webhook(
        self,
        event: str,
        body: dict[str, Any],
        url: str,
        record_id: str | None = None,
        task_id: str | None = None,
    ) -> NewNotification:
        delivery = self.new_id()  # the same on every retry: receivers drop repeats by it
        payload = {"event": event, "delivery": delivery, "body": {**body, "delivery": delivery}}
        return NewNotification(
            event, "webhook", payload, target=url, record_id=record_id, task_id=task_id
        )

    def _webhooks(
        self, event: str, body: dict[str, Any], record_id: str, task_id: str | None
    ) -> list[NewNotification]:
        return [
            self._webhook(event, body, hook.url, record_id, task_id)
            for hook in self.notify.webhook
            if event in hook.events
        ]
