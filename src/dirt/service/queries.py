"""Every read the CLI and the web make: records, tasks, attempts, attachments, nodes, the change
feed, metrics and API tokens. Reads only: each is one consistent snapshot of the store."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from sqlalchemy import Connection

from dirt.batch.jobs import BatchJob
from dirt.db import attachments as attachments_db
from dirt.db import audit as audit_db
from dirt.db import batch as batch_db
from dirt.db import browse as browse_db
from dirt.db import changes as changes_db
from dirt.db import nodes as nodes_db
from dirt.db import output as output_db
from dirt.db import records as records_db
from dirt.db import tasks as tasks_db
from dirt.db import tokens as tokens_db
from dirt.db.changes import Change
from dirt.db.engine import current_seq
from dirt.errors import NotFoundError
from dirt.models import (
    Attachment,
    Attempt,
    AuditEntry,
    Node,
    Record,
    RecordSummary,
    Task,
    TaskState,
)
from dirt.service.base import ServiceBase
from dirt.service.batch_reasons import explain_queued
from dirt.service.queue import explain_waiting

OUTPUT_READ = 1 << 20  # bytes of output one read returns (about: whole stored chunks)
# Stands for output not kept between a task's head and its tail.
TRUNCATED = "\n[... {n} bytes truncated (over [dispatch] output_limit) ...]\n"
# Stands for output not stored (yet) while a task runs: beyond its head, a node sends about a
# chunk a second of the newest output, and the rest of the tail when the task ends.
SKIPPED = "\n[... {n} bytes not shown while the task runs ...]\n"


@dataclass
class RecordDetail:
    record: Record
    tasks: list[Task]
    attachments: dict[str, list[Attachment]]
    attempts: dict[str, list[Attempt]]
    # Each task's latest batch job (a task run on a batch node): its Slurm job id, compute host.
    batch: dict[str, BatchJob] = field(default_factory=dict)


@dataclass
class AttachmentFile:
    """An attachment opened for reading: its row and its contents as a seekable binary file
    (the blob's file; for a row stored before the blob store, its contents in memory). Close it
    when done, or use it in a ``with`` block."""

    attachment: Attachment
    file: BinaryIO
    path: Path | None  # the blob's file, when the contents are in the blob store

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> AttachmentFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class OutputView:
    """A task's stored output from an offset (see `Queries.task_output`)."""

    data: bytes  # output bytes, with a TRUNCATED line where bytes were not kept
    next_offset: int  # where the next read continues
    more: bool  # more output may come (the task has not finished) or is stored beyond
    attempt: int  # the attempt whose output this is (0: the task never started)
    state: TaskState
    end: int  # where the attempt's stored output ends now
    live: bool  # the attempt may still write output (it is the task's latest, not finished)


def _get_record(conn: Connection, record_id: str) -> Record:
    record = records_db.get_record(conn, record_id)
    if record is None:
        raise NotFoundError(f"no record {record_id!r}; see `dirt status`")
    return record


def _get_task(conn: Connection, task_id: str) -> Task:
    task = tasks_db.get_task(conn, task_id)
    if task is None:
        raise NotFoundError(f"no task {task_id!r}")
    return task


class Queries(ServiceBase):
    """Reads; a waiting task read here carries why it waits now (`waiting_reason`)."""

    def _explained(self, conn: Connection, tasks: list[Task]) -> list[Task]:
        explain_waiting(conn, tasks, self.settings.dispatch.order)
        explain_queued(conn, tasks)
        return tasks

    # ---- records and tasks -------------------------------------------------------------------

    def record(self, record_id: str) -> Record:
        with self._read() as conn:
            return _get_record(conn, record_id)

    def record_summary(self, record_id: str) -> RecordSummary:
        """One record with its task counts per state."""
        with self._read() as conn:
            record = _get_record(conn, record_id)
            return RecordSummary(record, browse_db.record_counts(conn, [record_id])[record_id])

    def record_detail(self, record_id: str) -> RecordDetail:
        """A record with its tasks, their attachments (without contents) and attempts."""
        with self._read() as conn:
            record = _get_record(conn, record_id)
            found = self._explained(conn, tasks_db.tasks_of_record(conn, record_id))
            ids = [t.id for t in found]
            return RecordDetail(
                record,
                found,
                attachments_db.attachments_of(conn, ids),
                tasks_db.attempts_of(conn, ids),
                batch_db.latest_jobs(conn, ids),
            )

    def record_page(
        self,
        limit: int = 50,
        before: tuple[float, str] | None = None,
        state: str | None = None,
        search: str | None = None,
        branch: str | None = None,
    ) -> list[RecordSummary]:
        """Newest records first (keyset), optionally only those with a task in `state`, those
        matching `search`, those made from a commit on `branch`."""
        with self._read() as conn:
            found = browse_db.record_page(conn, limit, before, state, search, branch)
            counts = browse_db.record_counts(conn, [r.id for r in found])
        return [RecordSummary(r, counts[r.id]) for r in found]

    def task(self, task_id: str) -> Task:
        with self._read() as conn:
            return self._explained(conn, [_get_task(conn, task_id)])[0]

    def tasks(self, task_ids: Iterable[str]) -> list[Task]:
        """The tasks of those ids that exist, in the order asked."""
        with self._read() as conn:
            found = [t for t in (tasks_db.get_task(conn, i) for i in task_ids) if t is not None]
            return self._explained(conn, found)

    def task_detail(self, task_id: str) -> tuple[Task, list[Attachment], list[Attempt]]:
        with self._read() as conn:
            task = self._explained(conn, [_get_task(conn, task_id)])[0]
            found = attachments_db.attachments_of(conn, [task_id])[task_id]
            tried = tasks_db.attempts_of(conn, [task_id])[task_id]
        return task, found, tried

    def task_runs(
        self, name: str, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[Task]:
        """Every run of task `name` across records, newest first (keyset)."""
        with self._read() as conn:
            return self._explained(conn, browse_db.task_runs(conn, name, limit, before))

    def task_run_outcomes(self, name: str, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` runs of `name`: id, record_id, created, started, completed, state."""
        with self._read() as conn:
            return browse_db.run_outcomes(conn, name, limit)

    def attachment(self, task_id: str, filename: str) -> Attachment:
        """One attachment with its whole contents in memory (for small files; stream big ones
        with `open_attachment`)."""
        with self.open_attachment(task_id, filename) as opened:
            found = opened.attachment
            found.content = opened.file.read()
        return found

    def open_attachment(self, task_id: str, filename: str) -> AttachmentFile:
        """One attachment opened for streaming its contents (NotFoundError when there is no
        such attachment; BlobError when its blob is missing from the blob store)."""
        with self._read() as conn:
            found = attachments_db.get_attachment(conn, task_id, filename)
        if found is None:
            raise NotFoundError(f"task {task_id!r} has no attachment {filename!r}")
        if found.sha256 is None:
            return AttachmentFile(found, io.BytesIO(found.content or b""), None)
        return AttachmentFile(found, self.blobs.open(found.sha256), self.blobs.path(found.sha256))

    def task_output(
        self,
        task_id: str,
        offset: int = 0,
        max_bytes: int = OUTPUT_READ,
        attempt: int | None = None,
        until: int | None = None,
    ) -> OutputView:
        """What a task wrote to stdout and stderr, from byte `offset` of its output: of its
        latest attempt, or of `attempt`. Where output over [dispatch] output_limit was not
        kept, a TRUNCATED line says how many bytes are missing (a SKIPPED line while the task
        runs: what it prints faster than the live view is stored, up to the limit, when it
        ends). Readable while the task runs (about a second behind it) and after; ask again
        from `next_offset` while `more`. Nothing from `until` on is returned."""
        with self._read() as conn:
            task = _get_task(conn, task_id)
            number = task.attempts if attempt is None else attempt
            if not 0 <= number <= task.attempts:
                raise NotFoundError(f"task {task_id!r} has no attempt {number}")
            stored = output_db.read_output(conn, task_id, number, max(0, offset), max_bytes, until)
        still_running = number == task.attempts and not task.state.finished
        gap = SKIPPED if still_running else TRUNCATED
        parts = []
        position = max(0, offset)
        for start, data in stored.pieces:
            if start > position:
                parts.append(gap.format(n=start - position).encode())
            parts.append(data)
            position = start + len(data)
        return OutputView(
            b"".join(parts),
            stored.next_offset,
            still_running or stored.next_offset < stored.end,
            number,
            task.state,
            stored.end,
            still_running,
        )

    # ---- nodes -------------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        with self._read() as conn:
            return nodes_db.list_nodes(conn)

    def node(self, address: str) -> Node:
        with self._read() as conn:
            node = nodes_db.get_node(conn, address)
        if node is None:
            raise NotFoundError(f"no node {address!r}; see `dirt nodes list`")
        return node

    def running_per_node(self) -> dict[str, int]:
        with self._read() as conn:
            return tasks_db.running_per_node(conn)

    def running_on(self, address: str) -> list[Task]:
        with self._read() as conn:
            return browse_db.running_on(conn, address)

    # ---- change feed, metrics, tokens --------------------------------------------------------

    def changes_since(self, since: int, limit: int = 500) -> tuple[list[Change], int]:
        """What was written after change `since`, and the seq to ask from next."""
        with self._read() as conn:
            return changes_db.changes_since(conn, since, limit)

    def metrics(self, duration_window: int = 1000) -> dict[str, Any]:
        """Counts for /metrics; each is an indexed read whatever the store's size."""
        with self._read() as conn:
            online, total = browse_db.nodes_online(conn)
            return {
                "tasks": browse_db.state_totals(conn),
                "attempts_started": browse_db.attempts_started(conn),
                "durations": browse_db.recent_durations(conn, duration_window),
                "nodes_online": online,
                "nodes": total,
                "seq": current_seq(conn),
            }

    def find_token(self, token: str) -> tokens_db.TokenInfo | None:
        """The API token `token` (its name and scope), or None when there is no such token."""
        if not token:
            return None
        with self._read() as conn:
            return tokens_db.find_token(conn, tokens_db.digest(token))

    def verify_token(self, token: str) -> str | None:
        """The name of `token` when it is a valid API token that may write, else None.

        A read-only token (scope "read") is None here: callers that only know "a token or not"
        must not let it write. Use `find_token` to tell the scopes apart.
        """
        found = self.find_token(token)
        return found.name if found is not None and found.scope.may_write else None

    def audit(self, since: float | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` audited writes at or after `since`, oldest first."""
        with self._read() as conn:
            return audit_db.entries(conn, since, limit)

    def tokens(self) -> list[tokens_db.TokenInfo]:
        with self._read() as conn:
            return tokens_db.list_tokens(conn)
