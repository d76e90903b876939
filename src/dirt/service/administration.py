"""What users and their tools change: submit records and tasks, add and change nodes, cancel
and retry tasks, make and revoke API tokens."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from dirt import documents
from dirt.db import attachments as attachments_db
from dirt.db import control as control_db
from dirt.db import nodes as nodes_db
from dirt.db import records as records_db
from dirt.db import tasks as tasks_db
from dirt.db import tokens as tokens_db
from dirt.errors import NotFoundError, StateError
from dirt.models import Node, NodeKind, Task, TaskState, TokenScope
from dirt.service.base import NODES, log
from dirt.service.notices import Notices
from dirt.service.queue import retry_finished


def _submitted(submission: documents.Submission) -> str:
    """What a submission added, for the audit: its records (or the records its tasks join)
    and how many tasks."""
    records = [r.id for r in submission.records] or sorted({t.record_id for t in submission.tasks})
    shown = ", ".join(records[:20]) + (
        f" and {len(records) - 20} more" if len(records) > 20 else ""
    )
    return f"{shown}: {len(submission.tasks)} task(s)"


def _no_node(address: str) -> NotFoundError:
    return NotFoundError(f"no node {address!r}; see `dirt nodes list`")


class Administration(Notices):
    # ---- submitting --------------------------------------------------------------------------

    def submit(self, payload: Any, *, records_may_exist: bool = False) -> documents.Submission:
        """Store a submission in the original's formats, or reject it whole (SubmissionError)."""
        docs = documents.documents_of(payload)

        def work(conn: Connection, seq: int) -> documents.Submission:
            # Validation reads inside the write transaction, so nothing changes under it.
            submission = documents.parse_submission(
                docs,
                task_exists=self.modules.exists,
                stored_record_ids=lambda ids: records_db.existing_record_ids(conn, ids),
                stored_task_ids=lambda ids: tasks_db.existing_task_ids(conn, ids),
                records_may_exist=records_may_exist,
            )
            self._store_submission(conn, submission, seq)
            return submission

        submission = self._write(work, "submit", _submitted)
        for record in submission.records:
            log.info("Record %s added", record.id)
        log.info("%d task(s) added", len(submission.tasks))
        return submission

    def submit_tasks(
        self,
        record_id: str,
        names: Sequence[str],
        *,
        description: str | None = None,
        kwargs: dict[str, Any] | None = None,
        requires: Sequence[str] = (),
        platform: str | None = None,
        priority: int = 0,
        timeout: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> documents.Submission:
        """Create record `record_id` (or add to it, when it exists) with one task per name."""
        record_doc: dict[str, Any] = {**(extra or {}), "_id": record_id, "type": "record"}
        if description is not None:
            record_doc["description"] = description
        docs: list[dict[str, Any]] = [record_doc]
        for name in names:
            task_doc: dict[str, Any] = {
                "type": "task",
                "record_id": record_id,
                "name": name,
                "priority": priority,
            }
            optional = {
                "kwargs": kwargs,
                "requires": list(requires) or None,
                "platform": platform,
                "timeout": timeout,
            }
            task_doc.update({k: v for k, v in optional.items() if v is not None})
            docs.append(task_doc)
        return self.submit(docs, records_may_exist=True)

    # ---- nodes -------------------------------------------------------------------------------

    def save_node(
        self,
        address: str,
        sys_info: dict[str, Any],
        slots: int | None = None,
        ssh: dict[str, Any] | None = None,
    ) -> Node:
        """Add a node with freshly probed sys_info, or refresh a known one.

        `ssh`: per-node options (user, port, identity_file, ssh_config, python,
        host_key_checking) laid over the ones the node already has.
        """
        now = time.time()

        def work(conn: Connection, seq: int) -> tuple[Node, bool]:
            known = nodes_db.get_node(conn, address)
            if known is not None and known.kind is NodeKind.AGENT:
                raise StateError(
                    f"node {address!r} is an agent: it registers itself when its agent starts "
                    "(`python3 agent.py URL --token TOKEN --name NAME`)"
                )
            override = slots if slots is not None else (known.slots_override if known else None)
            options = {**(known.ssh if known else {}), **(ssh or {})}
            node = Node(
                address=address,
                enabled=known.enabled if known else True,
                online=True,
                slots=override or int(sys_info.get("cpu_count") or 1),
                slots_override=override,
                sys_info=sys_info,
                added=known.added if known else now,
                last_seen=now,
                last_error=None,
                load=sys_info.get("load"),
                ssh={k: v for k, v in options.items() if v not in (None, "")},
                kind=NodeKind.LOCAL if address == "local" else NodeKind.SSH,
            )
            nodes_db.upsert_node(conn, node, seq)
            return node, known is not None

        node, known = self._write(work, "node add", address, wake=NODES)
        log.info("Node %s %s (%d slots)", address, "refreshed" if known else "added", node.slots)
        return node

    def set_node_enabled(self, address: str, enabled: bool) -> None:
        if not self._write(
            lambda conn, seq: nodes_db.update_node(conn, address, seq, enabled=enabled),
            "node enable" if enabled else "node disable",
            address,
            wake=NODES,
        ):
            raise _no_node(address)
        log.info("Node %s %s", address, "enabled" if enabled else "disabled")

    def remove_node(self, address: str) -> None:
        """Forget a node; refused (StateError) while it runs tasks."""

        def work(conn: Connection, seq: int) -> bool:
            running = tasks_db.running_per_node(conn).get(address, 0)
            if running:
                raise StateError(
                    f"node {address!r} is running {running} task(s); "
                    "disable it and wait, or stop the dispatcher first"
                )
            return nodes_db.delete_node(conn, address)

        if not self._write(work, "node remove", address, wake=NODES):
            raise _no_node(address)
        log.info("Node %s removed", address)

    # ---- cancel and retry --------------------------------------------------------------------

    def cancel_task(self, task_id: str) -> Task:
        """Cancel a task: a waiting one at once; a running one is killed on its node by the
        dispatcher that runs it, which then stores it as cancelled. Returns the task."""

        def work(conn: Connection, seq: int) -> Task:
            done = control_db.cancel_task(conn, task_id, time.time(), seq)
            task = tasks_db.get_task(conn, task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            if not done:
                raise StateError(f"task {task_id} is {task.state.value}: nothing to cancel")
            if task.state is TaskState.CANCELLED:
                self._notice_finished(conn, [task_id])
            return task

        task = self._write(work, "cancel", task_id)
        if task.state is TaskState.CANCELLED:
            log.info("Task %s cancelled", task_id)
        else:
            log.info("Task %s: cancel requested; its dispatcher kills it on %s", task_id, task.node)
        return task

    def retry_task(self, task_id: str) -> Task:
        """Run a finished task again (its attempts so far are kept). Returns the task."""

        def work(conn: Connection, seq: int) -> Task:
            retried = retry_finished(conn, [task_id], seq)
            task = tasks_db.get_task(conn, task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            if not retried:
                raise StateError(
                    f"task {task_id} is {task.state.value}: only a finished task can be retried"
                )
            attachments_db.delete_attachments(conn, retried)
            self._notice_retried(conn, retried)
            return task

        task = self._write(work, "retry", task_id)
        log.info("Task %s waiting again (retry)", task_id)
        return task

    def retry_failed(self, record_id: str) -> list[str]:
        """Every failed task of record `record_id` back to waiting; returns their ids."""

        def work(conn: Connection, seq: int) -> list[str]:
            if records_db.get_record(conn, record_id) is None:
                raise NotFoundError(f"no record {record_id!r}; see `dirt status`")
            retried = retry_finished(conn, tasks_db.failed_task_ids(conn, record_id), seq)
            attachments_db.delete_attachments(conn, retried)
            self._notice_retried(conn, retried)
            return retried

        retried = self._write(
            work, "retry failed", lambda ids: f"record {record_id}: {len(ids)} task(s)"
        )
        log.info("Record %s: %d failed task(s) waiting again", record_id, len(retried))
        return retried

    # ---- API tokens --------------------------------------------------------------------------

    def create_token(self, name: str, scope: TokenScope = TokenScope.API) -> str:
        """Make API token `name` with `scope`; returns the token, which is stored only as its
        sha256."""
        name = documents.token_name(name)
        token = "dirt_" + secrets.token_urlsafe(32)

        def work(conn: Connection, seq: int) -> None:
            if tokens_db.name_taken(conn, name):
                raise StateError(f"a token named {name!r} exists; revoke it first")
            tokens_db.insert_token(conn, name, tokens_db.digest(token), time.time(), scope)

        self._write(work, "token create", f"{name} (scope {scope.value})", wake=None)
        log.info("API token %s created (scope %s)", name, scope.value)
        return token

    def revoke_token(self, name: str) -> None:
        if not self._write(
            lambda conn, seq: tokens_db.delete_token(conn, name), "token revoke", name, wake=None
        ):
            raise NotFoundError(f"no token named {name!r}; see `dirt token list`")
        log.info("API token %s revoked", name)
