"""The JSON views of records, tasks, attempts, attachments and nodes: one shape for the CLI
(`dirt status --json`, `dirt nodes list --json`) and the web API, so the two cannot drift.

Every view starts from the model's own document (`to_doc`: the original's format, extra fields as
they came) and adds what dirt knows about it. A task's `node`, `started`, `completed`, `reason`,
`results` and `output` are always present (null until known); its `reason` is why it ended or,
for a waiting task, why it waits (`waiting_reason` keeps the latter on its own too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from dirt.models import (
    Attachment,
    Attempt,
    Dispatcher,
    Node,
    Record,
    RecordSummary,
    Task,
    TaskState,
)


class Detail(Protocol):
    """A record with its tasks, their attachments and their attempts (Service.record_detail)."""

    @property
    def record(self) -> Record: ...
    @property
    def tasks(self) -> list[Task]: ...
    @property
    def attachments(self) -> dict[str, list[Attachment]]: ...
    @property
    def attempts(self) -> dict[str, list[Attempt]]: ...


def attachment_url(task_id: str, filename: str) -> str:
    """Where the API serves a task's attachment (relative to the server's root)."""
    return f"/api/tasks/{quote(task_id, safe='')}/attachments/{quote(filename, safe='')}"


def attachment_view(a: Attachment) -> dict[str, Any]:
    return {
        "filename": a.filename,
        "link_name": a.link_name,
        "content_type": a.content_type,
        "size": a.size,
        "url": attachment_url(a.task_id, a.filename),
    }


def attempt_view(a: Attempt) -> dict[str, Any]:
    """One try of a task: `outcome` is null while it runs."""
    return {
        "task_id": a.task_id,
        "number": a.number,
        "node": a.node,
        "started": a.started,
        "completed": a.completed,
        "outcome": a.outcome,
        "reason": a.reason,
    }


def task_view(
    task: Task,
    attachments: Sequence[Attachment] | None = None,
    attempts: Sequence[Attempt] | None = None,
) -> dict[str, Any]:
    """The task document plus `duration` and `output`; `attachments` and `attempt_history`
    when they were loaded (a record's or a task's own view, not a list of runs)."""
    view = task.to_doc()
    view.update(
        node=task.node,
        started=task.started,
        completed=task.completed,
        duration=task.duration,
        reason=task.reason or task.waiting_reason,
        results=task.results,
        output=task.output,
    )
    if attachments is not None:
        view["attachments"] = [attachment_view(a) for a in attachments]
    if attempts is not None:
        view["attempt_history"] = [attempt_view(a) for a in attempts]
    return view


def status_task_view(
    task: Task, attachments: Sequence[Attachment], attempts: Sequence[Attempt]
) -> dict[str, Any]:
    """`task_view` as `dirt status RECORD --json` prints it: there, as it always was, `attempts`
    is the list of attempts (the API's `attempt_history`), not their number."""
    view = task_view(task, attachments, attempts)
    view["attempts"] = view["attempt_history"]
    return view


def counts_view(counts: Mapping[str, int]) -> dict[str, int]:
    """Tasks per state, every state present (0 when none), in TaskState's order."""
    return {state.value: counts.get(state.value, 0) for state in TaskState}


def record_view(record: Record) -> dict[str, Any]:
    return record.to_doc()


def summary_view(summary: RecordSummary) -> dict[str, Any]:
    """A record in a list: its document with `ntasks` and `counts` per state."""
    return {
        **record_view(summary.record),
        "ntasks": summary.ntasks,
        "counts": counts_view(summary.counts),
    }


def detail_view(detail: Detail, *, for_status: bool = False) -> dict[str, Any]:
    """`{"record", "tasks"}`: a record and every task with its attachments and attempts."""
    one = status_task_view if for_status else task_view
    return {
        "record": record_view(detail.record),
        "tasks": [
            one(t, detail.attachments.get(t.id, []), detail.attempts.get(t.id, []))
            for t in detail.tasks
        ],
    }


def node_view(node: Node, running: int) -> dict[str, Any]:
    """The node with `running`: tasks it runs now."""
    return {**node.to_doc(), "running": running}


def nodes_view(nodes: Iterable[Node], running: Mapping[str, int]) -> list[dict[str, Any]]:
    return [node_view(n, running.get(n.address, 0)) for n in nodes]


def short_master(master: str | None) -> str:
    """A dispatcher as people name it: host:pid (its id adds a random part)."""
    if not master:
        return "-"
    host, _, rest = master.partition(":")
    return f"{host}:{rest.partition(':')[0]}" if rest else master


def dispatchers_view(found: Iterable[Dispatcher]) -> list[dict[str, Any]]:
    """The dispatchers (masters) on the store, with their leases, nodes and running tasks."""
    return [d.to_doc() for d in found]
