"""Every read the CLI and the web make: records, tasks, attempts, attachments, nodes, the change
feed, metrics and API tokens. Reads only: each is one consistent snapshot of the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from dirt.db import attachments as attachments_db
from dirt.db import audit as audit_db
from dirt.db import browse as browse_db
from dirt.db import changes as changes_db
from dirt.db import nodes as nodes_db
from dirt.db import records as records_db
from dirt.db import tasks as tasks_db
from dirt.db import tokens as tokens_db
from dirt.db.changes import Change
from dirt.db.engine import current_seq
from dirt.errors import NotFoundError
from dirt.models import Attachment, Attempt, AuditEntry, Node, Record, RecordSummary, Task
from dirt.service.base import ServiceBase
from dirt.service.queue import explain_waiting


@dataclass
class RecordDetail:
    record: Record
    tasks: list[Task]
    attachments: dict[str, list[Attachment]]
    attempts: dict[str, list[Attempt]]


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
        """One attachment with its contents."""
        with self._read() as conn:
            found = attachments_db.get_attachment(conn, task_id, filename)
        if found is None:
            raise NotFoundError(f"task {task_id!r} has no attachment {filename!r}")
        return found

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
