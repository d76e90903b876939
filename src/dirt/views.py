"""The JSON views of records, tasks, attempts, attachments and nodes: one shape for the CLI
(`dirt status --json`, `dirt nodes list --json`) and the web API, so the two cannot drift.

Every view starts from the model's own document (`to_doc`: the original's format, extra fields as
they came) and adds what dirt knows about it. A task's `node`, `started`, `completed`, `reason`,
`results` and `output` are always present (null until known); its `reason` is why it ended or,
for a waiting task, why it waits (`waiting_reason` keeps the latter on its own too).

A node is only ever shown through `shown_node`: its environment by names (values only for
`[nodes] show_environ`), passwords masked (`dirt.redact`). Every read (API, pages, CLI, feeds)
takes nodes from here; only the dispatcher sees the sys_info as stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from dirt.models import (
    Attachment,
    Attempt,
    Dispatcher,
    DispatcherInfo,
    Node,
    Record,
    RecordSummary,
    Task,
    TaskState,
)
from dirt.redact import mask_text, masked, shown_sys_info


class Queued(Protocol):
    """One record of the queue view (service.QueueEntry)."""

    @property
    def record(self) -> Record: ...
    @property
    def waiting(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def gets(self) -> float: ...


class Queue(Protocol):
    """The queue view (service.QueueView)."""

    @property
    def entries(self) -> list[Any]: ...
    @property
    def records(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def order(self) -> str: ...
    @property
    def dispatchers(self) -> list[DispatcherInfo]: ...
    @property
    def idle(self) -> str | None: ...


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


def output_url(task_id: str) -> str:
    """Where the API serves a task's output (progressive text, see `GET .../output`)."""
    return f"/api/tasks/{quote(task_id, safe='')}/output"


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
    views = []
    jobs = getattr(detail, "batch", {})
    for t in detail.tasks:
        view = one(t, detail.attachments.get(t.id, []), detail.attempts.get(t.id, []))
        job = jobs.get(t.id)
        if job is not None:
            view["batch_job"] = {
                "node": job.node,
                "attempt": job.attempt,
                "job_id": job.job_id,
                "compute_host": job.compute_host,
                "state": job.slurm_state,
                "outcome": job.outcome,
            }
        views.append(view)
    return {"record": record_view(detail.record), "tasks": views}


def shown_node(node: Node, show_environ: Sequence[str]) -> Node:
    """The node as a read may show it: environment values only for the names in
    `show_environ`, passwords in URLs, command lines and secret-named keys masked."""
    return dataclasses.replace(
        node,
        sys_info=shown_sys_info(node.sys_info, show_environ),
        ssh=masked(node.ssh),
        last_error=mask_text(node.last_error) if node.last_error else node.last_error,
    )


def node_view(node: Node, running: int, show_environ: Sequence[str]) -> dict[str, Any]:
    """The node (as `shown_node` shows it) with `running`: tasks it runs now."""
    return {**shown_node(node, show_environ).to_doc(), "running": running}


def nodes_view(
    nodes: Iterable[Node], running: Mapping[str, int], show_environ: Sequence[str]
) -> list[dict[str, Any]]:
    return [node_view(n, running.get(n.address, 0), show_environ) for n in nodes]


def dispatcher_view(d: DispatcherInfo) -> dict[str, Any]:
    """A running dispatcher as it announced itself."""
    return {
        "id": d.id,
        "host": d.host,
        "pid": d.pid,
        "started": d.started,
        "last_seen": d.last_seen,
        "order": d.order,
    }


def queued_view(e: Queued) -> dict[str, Any]:
    """A record in the queue: `share` (turns per round under fair order), its waiting and
    running tasks, and `gets`: its part of all tasks running now (0 to 1)."""
    return {
        "record_id": e.record.id,
        "description": e.record.description,
        "created": e.record.created,
        "share": e.record.share,
        "waiting": e.waiting,
        "running": e.running,
        "gets": round(e.gets, 4),
    }


def queue_view(q: Queue) -> dict[str, Any]:
    """`dirt queue --json` and GET /api/queue: the order in force, the dispatchers running (or
    `no_dispatcher`: why none is), totals, and per record (oldest first) its counts and share."""
    return {
        "order": q.order,
        "dispatchers": [dispatcher_view(d) for d in q.dispatchers],
        "no_dispatcher": q.idle,
        "records": q.records,
        "waiting": q.waiting,
        "running": q.running,
        "queue": [queued_view(e) for e in q.entries],
    }


def short_master(master: str | None) -> str:
    """A dispatcher as people name it: host:pid (its id adds a random part)."""
    if not master:
        return "-"
    host, _, rest = master.partition(":")
    return f"{host}:{rest.partition(':')[0]}" if rest else master


def dispatchers_view(found: Iterable[Dispatcher]) -> list[dict[str, Any]]:
    """The dispatchers (masters) on the store, with their leases, nodes and running tasks."""
    return [d.to_doc() for d in found]
