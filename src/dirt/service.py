"""The use cases: the only writer of the store. Owns transactions, bumps the change sequence."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from dirt import documents
from dirt.config import Settings
from dirt.db import attachments as attachments_db
from dirt.db import browse as browse_db
from dirt.db import changes as changes_db
from dirt.db import migrate
from dirt.db import nodes as nodes_db
from dirt.db import records as records_db
from dirt.db import tasks as tasks_db
from dirt.db import tokens as tokens_db
from dirt.db.changes import Change
from dirt.db.engine import current_seq, make_engine, next_seq, read_transaction, write_transaction
from dirt.errors import NotFoundError, StateError
from dirt.logs import info_lines
from dirt.models import Attachment, Attempt, Node, Record, RecordSummary, Task, TaskState
from dirt.project import TaskModules

log = logging.getLogger("dirt")


@dataclass
class Finished:
    """What the dispatcher learned about one task run, ready to store."""

    task_id: str
    attempt: int
    node: str
    state: TaskState
    results: dict[str, Any] | None
    reason: str | None
    module_sha256: str | None
    output: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    completed: float = field(default_factory=time.time)
    # Set when the run's start was never written: start and finish are stored together.
    started: float | None = None


@dataclass
class RecordDetail:
    record: Record
    tasks: list[Task]
    attachments: dict[str, list[Attachment]]
    attempts: dict[str, list[Attempt]]


def new_master_id() -> str:
    """Names this dispatcher in the claims it makes: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Service:
    """Every write of records, tasks and nodes goes through here."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.database_url)
        migrate.upgrade(self.engine)
        self.modules = TaskModules(settings.tasks_dir)
        self.master_id = new_master_id()
        self._listeners: list[Callable[[int], None]] = []
        self._seq_lock = threading.Lock()
        self._known_seq = 0

    def close(self) -> None:
        self.engine.dispose()

    # ---- change notification -------------------------------------------------------------

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """Call `callback(seq)` after every write this process commits."""
        self._listeners.append(callback)

    def _committed(self, seq: int) -> None:
        with self._seq_lock:
            self._known_seq = max(self._known_seq, seq)
        for callback in list(self._listeners):
            try:
                callback(seq)
            except Exception:
                log.exception("change listener failed")

    def current_seq(self) -> int:
        with read_transaction(self.engine) as conn:
            return current_seq(conn)

    def changed_elsewhere(self) -> bool:
        """True when another process wrote since this one last looked (one indexed read)."""
        seq = self.current_seq()
        with self._seq_lock:
            changed = seq != self._known_seq
            self._known_seq = max(self._known_seq, seq)
        return changed

    def _write(self, work: Callable[[Any, int], Any]) -> Any:
        with write_transaction(self.engine) as conn:
            seq = next_seq(conn)
            result = work(conn, seq)
        self._committed(seq)
        return result

    # ---- submitting ----------------------------------------------------------------------

    def submit(self, payload: Any, *, records_may_exist: bool = False) -> documents.Submission:
        """Store a submission in the original's formats, or reject it whole (SubmissionError)."""
        docs = documents.documents_of(payload)

        def work(conn: Any, seq: int) -> documents.Submission:
            # Validation reads inside the write transaction, so nothing changes under it.
            submission = documents.parse_submission(
                docs,
                task_exists=self.modules.exists,
                stored_record_ids=lambda ids: records_db.existing_record_ids(conn, ids),
                stored_task_ids=lambda ids: tasks_db.existing_task_ids(conn, ids),
                records_may_exist=records_may_exist,
            )
            records_db.insert_records(conn, submission.records, seq)
            tasks_db.insert_tasks(conn, submission.tasks, seq)
            return submission

        submission = self._write(work)
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

    # ---- dispatching ---------------------------------------------------------------------

    def waiting_tasks(self, limit: int) -> list[Task]:
        with read_transaction(self.engine) as conn:
            return tasks_db.waiting_tasks(conn, limit)

    def claim(
        self, pairs: Sequence[tuple[str, str]], finished: Sequence[Finished] = ()
    ) -> list[str]:
        """Store `finished` runs, then claim (task id, node) pairs, in one transaction.

        Returns the ids claimed; a task another master claimed first is skipped.
        """

        def work(conn: Any, seq: int) -> list[str]:
            self._store_finished(conn, finished, seq)
            return tasks_db.claim_tasks(conn, pairs, self.master_id, time.time(), seq)

        if not pairs and not finished:
            return []
        claimed = self._write(work)
        return claimed

    def dispatch(
        self,
        finished: Sequence[Finished],
        starts: Sequence[tuple[str, str, float, int]],
        reserve: Sequence[str],
    ) -> tuple[list[str], list[str]]:
        """One dispatcher step in one transaction: mark reserved tasks (id, node, started,
        attempt) as running, store finished runs, reserve more waiting tasks for this master.

        Returns (started ids, reserved ids).
        """
        if not finished and not starts and not reserve:
            return [], []

        def work(conn: Any, seq: int) -> tuple[list[str], list[str]]:
            # Starts go first: a task can finish in the same step it was marked running.
            started = tasks_db.start_tasks(conn, starts, self.master_id, seq)
            self._store_finished(conn, finished, seq)
            return started, tasks_db.reserve_tasks(conn, reserve, self.master_id, seq)

        return self._write(work)

    def release(self, task_ids: Sequence[str] | None = None) -> int:
        """Give back tasks this master reserved but did not start (all, or those named)."""
        return self._write(
            lambda conn, seq: tasks_db.release_reservations(conn, seq, self.master_id, task_ids)
        )

    def finish(self, finished: Sequence[Finished]) -> None:
        if finished:
            self.claim((), finished)

    def _store_finished(self, conn: Any, finished: Sequence[Finished], seq: int) -> None:
        if not finished:
            return
        rows = [
            {
                "id": f.task_id,
                "master": self.master_id,
                "attempt": f.attempt,
                "state": f.state.value,
                "completed": f.completed,
                "results": f.results,
                "reason": f.reason,
                "module_sha256": f.module_sha256,
                "output": f.output,
                "node": f.node,
                "started": f.started,
            }
            for f in finished
        ]
        written = set(tasks_db.finish_tasks(conn, rows, seq))
        attachments_db.insert_attachments(
            conn, [a for f in finished if f.task_id in written for a in f.attachments]
        )
        lines = []
        for f in finished:
            if f.task_id not in written:
                log.warning("Task %s: result from %s dropped, the task moved on", f.task_id, f.node)
                continue
            lines.append(f"Task {f.task_id} pushed to db")
            lines += [f"Task {f.task_id}: file {a.filename} attached" for a in f.attachments]
        info_lines(log, lines)

    def requeue(
        self, items: Sequence[tuple[str, int]], reason: str, *, node_lost: bool = False
    ) -> tuple[list[str], list[str]]:
        """Running (task id, attempt) pairs back to waiting.

        When `node_lost`, a task that has now lost `max_attempts` nodes fails instead.
        Returns (requeued ids, failed ids).
        """

        def work(conn: Any, seq: int) -> tuple[list[str], list[str]]:
            now = time.time()
            give_up: list[tuple[str, int]] = []
            again = list(items)
            if node_lost:
                again = []
                for task_id, attempt in items:
                    lost_before = tasks_db.trailing_lost_attempts(conn, task_id)
                    if lost_before + 1 >= self._max_attempts(conn, task_id):
                        give_up.append((task_id, attempt))
                    else:
                        again.append((task_id, attempt))
            requeued = tasks_db.requeue_tasks(conn, again, reason, now, seq, self.master_id)
            failed_rows = [
                {
                    "id": task_id,
                    "master": self.master_id,
                    "attempt": attempt,
                    "state": TaskState.FAILED.value,
                    "completed": now,
                    "results": None,
                    "reason": f"{reason}; gave up after {attempt} attempt(s)",
                    "module_sha256": None,
                    "output": None,
                }
                for task_id, attempt in give_up
            ]
            failed = tasks_db.finish_tasks(conn, failed_rows, seq)
            return requeued, failed

        requeued, failed = self._write(work)
        for task_id in requeued:
            log.info("Task %s back to waiting: %s", task_id, reason)
        for task_id in failed:
            log.warning("Task %s failed: %s; no attempts left", task_id, reason)
        return requeued, failed

    def _max_attempts(self, conn: Any, task_id: str) -> int:
        task = tasks_db.get_task(conn, task_id)
        if task is not None and task.max_attempts:
            return task.max_attempts
        return self.settings.dispatch.max_attempts

    def fail_unrunnable(self, task_id: str, reason: str) -> bool:
        """A waiting task that can never run (its module is gone) fails with `reason`."""
        return self._write(
            lambda conn, seq: tasks_db.fail_waiting(conn, task_id, reason, time.time(), seq)
        )

    def set_waiting_reasons(self, reasons: dict[str, str | None]) -> None:
        if reasons:
            self._write(lambda conn, seq: tasks_db.set_waiting_reasons(conn, reasons, seq))

    def recover_orphans(self) -> list[str]:
        """Tasks a dead dispatcher on this host left running go back to waiting."""
        with read_transaction(self.engine) as conn:
            claims = tasks_db.running_claims(conn)
            reservers = tasks_db.reserving_masters(conn)
        orphans = [(t, attempt) for t, attempt, owner in claims if self._master_gone(owner)]
        for master in reservers:
            if self._master_gone(master):
                self._write(lambda conn, seq, m=master: tasks_db.release_reservations(conn, seq, m))
        if not orphans:
            return []
        reason = "its dispatcher stopped without returning it"
        recovered = self._write(
            lambda conn, seq: tasks_db.requeue_tasks(conn, orphans, reason, time.time(), seq)
        )
        for task_id in recovered:
            log.warning(
                "Task %s was left running by a dispatcher that died; back to waiting", task_id
            )
        return recovered

    def _master_gone(self, owner: str | None) -> bool:
        """True when `owner` (host:pid:token) is a dispatcher on this host that is not running.

        A master on another host is presumed alive: only it can return its tasks.
        """
        if owner is None:
            return True
        owner_host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if owner_host != socket.gethostname():
            return False
        return not _pid_alive(pid) or (pid == str(os.getpid()) and owner != self.master_id)

    # ---- nodes ---------------------------------------------------------------------------

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
        with read_transaction(self.engine) as conn:
            known = nodes_db.get_node(conn, address)
        override = slots if slots is not None else (known.slots_override if known else None)
        options = {**(known.ssh if known else {}), **(ssh or {})}
        options = {k: v for k, v in options.items() if v not in (None, "")}
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
            ssh=options,
        )
        self._write(lambda conn, seq: nodes_db.upsert_node(conn, node, seq))
        log.info("Node %s %s (%d slots)", address, "refreshed" if known else "added", node.slots)
        return node

    def set_node_enabled(self, address: str, enabled: bool) -> None:
        if not self._write(
            lambda conn, seq: nodes_db.update_node(conn, address, seq, enabled=enabled)
        ):
            raise NotFoundError(f"no node {address!r}; see `dirt nodes list`")
        log.info("Node %s %s", address, "enabled" if enabled else "disabled")

    def remove_node(self, address: str) -> None:
        def work(conn: Any, seq: int) -> bool:
            running = [t for t in tasks_db.running_tasks(conn) if t.node == address]
            if running:
                raise StateError(
                    f"node {address!r} is running {len(running)} task(s); "
                    "disable it and wait, or stop the dispatcher first"
                )
            return nodes_db.delete_node(conn, address)

        if not self._write(work):
            raise NotFoundError(f"no node {address!r}; see `dirt nodes list`")
        log.info("Node %s removed", address)

    def node_health(
        self,
        address: str,
        *,
        online: bool,
        error: str | None = None,
        load: list[float] | None = None,
        infra_failure: bool = False,
    ) -> None:
        values: dict[str, Any] = {"online": online}
        if online:
            values["last_seen"] = time.time()
            values["last_error"] = None
        if error is not None:
            values["last_error"] = error
        if load is not None:
            values["load"] = load
        if infra_failure:
            values["infra_failures"] = nodes_db.nodes.c.infra_failures + 1
        self._write(lambda conn, seq: nodes_db.update_node(conn, address, seq, **values))

    # ---- cancel and retry ----------------------------------------------------------------

    def cancel_task(self, task_id: str) -> Task:
        """Cancel a task: a waiting one at once; a running one is killed on its node by the
        dispatcher that runs it, which then stores it as cancelled. Returns the task."""

        def work(conn: Any, seq: int) -> Task:
            done = tasks_db.cancel_task(conn, task_id, time.time(), seq)
            task = tasks_db.get_task(conn, task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            if done is None:
                raise StateError(f"task {task_id} is {task.state.value}: nothing to cancel")
            return task

        task = self._write(work)
        if task.state is TaskState.CANCELLED:
            log.info("Task %s cancelled", task_id)
        else:
            log.info("Task %s: cancel requested; its dispatcher kills it on %s", task_id, task.node)
        return task

    def retry_task(self, task_id: str) -> Task:
        """Run a finished task again (its attempts so far are kept). Returns the task."""

        def work(conn: Any, seq: int) -> Task:
            retried = tasks_db.retry_tasks(conn, [task_id], seq)
            task = tasks_db.get_task(conn, task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            if not retried:
                raise StateError(
                    f"task {task_id} is {task.state.value}: only a finished task can be retried"
                )
            attachments_db.delete_attachments(conn, retried)
            return task

        task = self._write(work)
        log.info("Task %s waiting again (retry)", task_id)
        return task

    def retry_failed(self, record_id: str) -> list[str]:
        """Every failed task of record `record_id` back to waiting; returns their ids."""

        def work(conn: Any, seq: int) -> list[str]:
            if records_db.get_record(conn, record_id) is None:
                raise NotFoundError(f"no record {record_id!r}; see `dirt status`")
            retried = tasks_db.retry_tasks(conn, tasks_db.failed_task_ids(conn, record_id), seq)
            attachments_db.delete_attachments(conn, retried)
            return retried

        retried = self._write(work)
        log.info("Record %s: %d failed task(s) waiting again", record_id, len(retried))
        return retried

    def cancel_requested(self) -> list[tuple[str, int]]:
        """Running tasks of this dispatcher that someone asked to cancel: (id, attempt)."""
        with read_transaction(self.engine) as conn:
            return tasks_db.cancel_requested(conn, self.master_id)

    # ---- reads ---------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        with read_transaction(self.engine) as conn:
            return nodes_db.list_nodes(conn)

    def running_per_node(self) -> dict[str, int]:
        with read_transaction(self.engine) as conn:
            return tasks_db.running_per_node(conn)

    def node(self, address: str) -> Node:
        with read_transaction(self.engine) as conn:
            node = nodes_db.get_node(conn, address)
        if node is None:
            raise NotFoundError(f"no node {address!r}; see `dirt nodes list`")
        return node

    def record_summary(self, record_id: str) -> RecordSummary:
        """One record with its task counts per state."""
        with read_transaction(self.engine) as conn:
            record = records_db.get_record(conn, record_id)
            if record is None:
                raise NotFoundError(f"no record {record_id!r}; see `dirt status`")
            return RecordSummary(record, browse_db.record_counts(conn, [record_id])[record_id])

    def record_detail(self, record_id: str) -> RecordDetail:
        with read_transaction(self.engine) as conn:
            record = records_db.get_record(conn, record_id)
            if record is None:
                raise NotFoundError(f"no record {record_id!r}; see `dirt status`")
            found = tasks_db.tasks_of_record(conn, record_id)
            ids = [t.id for t in found]
            return RecordDetail(
                record,
                found,
                attachments_db.attachments_of(conn, ids),
                tasks_db.attempts_of(conn, ids),
            )

    def task(self, task_id: str) -> Task:
        with read_transaction(self.engine) as conn:
            task = tasks_db.get_task(conn, task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id!r}")
        return task

    def tasks(self, task_ids: Iterable[str]) -> list[Task]:
        with read_transaction(self.engine) as conn:
            return [t for t in (tasks_db.get_task(conn, i) for i in task_ids) if t is not None]

    def attachment(self, task_id: str, filename: str) -> Attachment:
        with read_transaction(self.engine) as conn:
            found = attachments_db.get_attachment(conn, task_id, filename)
        if found is None:
            raise NotFoundError(f"task {task_id!r} has no attachment {filename!r}")
        return found

    # ---- the web: pages, change feed, metrics, tokens -------------------------------------

    def record_page(
        self,
        limit: int = 50,
        before: tuple[float, str] | None = None,
        state: str | None = None,
        search: str | None = None,
    ) -> list[RecordSummary]:
        """Newest records first (keyset), optionally only those with a task in `state`."""
        with read_transaction(self.engine) as conn:
            found = browse_db.record_page(conn, limit, before, state, search)
            counts = browse_db.record_counts(conn, [r.id for r in found])
        return [RecordSummary(r, counts[r.id]) for r in found]

    def record(self, record_id: str) -> Record:
        with read_transaction(self.engine) as conn:
            record = records_db.get_record(conn, record_id)
        if record is None:
            raise NotFoundError(f"no record {record_id!r}; see `dirt status`")
        return record

    def task_runs(
        self, name: str, limit: int = 50, before: tuple[float, str] | None = None
    ) -> list[Task]:
        """Every run of task `name` across records, newest first (keyset)."""
        with read_transaction(self.engine) as conn:
            return browse_db.task_runs(conn, name, limit, before)

    def task_run_outcomes(self, name: str, limit: int = 200) -> list[dict[str, Any]]:
        with read_transaction(self.engine) as conn:
            return browse_db.run_outcomes(conn, name, limit)

    def task_detail(self, task_id: str) -> tuple[Task, list[Attachment], list[Attempt]]:
        with read_transaction(self.engine) as conn:
            task = tasks_db.get_task(conn, task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            found = attachments_db.attachments_of(conn, [task_id])[task_id]
            tried = tasks_db.attempts_of(conn, [task_id])[task_id]
        return task, found, tried

    def running_on(self, address: str) -> list[Task]:
        with read_transaction(self.engine) as conn:
            return browse_db.running_on(conn, address)

    def changes_since(self, since: int, limit: int = 500) -> tuple[list[Change], int]:
        """What was written after change `since`, and the seq to ask from next."""
        with read_transaction(self.engine) as conn:
            return changes_db.changes_since(conn, since, limit)

    def metrics(self, duration_window: int = 1000) -> dict[str, Any]:
        """Counts for /metrics; each is an indexed read whatever the store's size."""
        with read_transaction(self.engine) as conn:
            online, total = browse_db.nodes_online(conn)
            return {
                "tasks": browse_db.state_totals(conn),
                "attempts_started": browse_db.attempts_started(conn),
                "durations": browse_db.recent_durations(conn, duration_window),
                "nodes_online": online,
                "nodes": total,
                "seq": current_seq(conn),
            }

    def create_token(self, name: str) -> str:
        """Make API token `name`; returns the token, which is stored only as its sha256."""
        name = documents.token_name(name)
        token = "dirt_" + secrets.token_urlsafe(32)
        with write_transaction(self.engine) as conn:
            if tokens_db.name_taken(conn, name):
                raise StateError(f"a token named {name!r} exists; revoke it first")
            tokens_db.insert_token(conn, name, _sha256(token), time.time())
        log.info("API token %s created", name)
        return token

    def verify_token(self, token: str) -> str | None:
        """The name of `token` when it is a valid API token, else None."""
        if not token:
            return None
        with read_transaction(self.engine) as conn:
            return tokens_db.token_name(conn, _sha256(token))

    def tokens(self) -> list[tokens_db.TokenInfo]:
        with read_transaction(self.engine) as conn:
            return tokens_db.list_tokens(conn)

    def revoke_token(self, name: str) -> None:
        with write_transaction(self.engine) as conn:
            if not tokens_db.delete_token(conn, name):
                raise NotFoundError(f"no token named {name!r}; see `dirt token list`")
        log.info("API token %s revoked", name)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pid_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
