"""Notification rows, written in the transaction of the change that caused them.

Every write that creates, starts or finishes a task calls one of the `_notice_*` helpers inside
its `_write`: they ask the `Planner` which rows the change makes (commit statuses, webhooks,
and, when the task was its record's last unfinished one, the record's mail) and insert them into
the outbox, so a notification exists exactly when its change does. With no `[notify.*]` channel
configured `planner` is None and each helper returns at once: the dispatcher's path pays one
attribute read. Once a transaction that wrote rows commits, the outbox listeners (the server's
sender) are woken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence

from sqlalchemy import Connection, Engine

from dirt import documents
from dirt.ci_config import channels_configured
from dirt.config import Settings
from dirt.db import branches as branches_db
from dirt.db import notices as notices_db
from dirt.db import outbox as outbox_db
from dirt.db import records as records_db
from dirt.db import tasks as tasks_db
from dirt.db.outbox import NewNotification
from dirt.models import Record, Task
from dirt.notify.plan import Planner, record_outcome
from dirt.service.base import ServiceBase, log
from dirt.service.queue import give_turns


class Notices(ServiceBase):
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        super().__init__(settings, engine)
        notify = settings.notify
        self.planner: Planner | None = None
        if channels_configured(notify):
            self.planner = Planner(notify, project=settings.name, base_url=settings.base_url)
        self._outbox_listeners: list[Callable[[], None]] = []
        # Set by a transaction that wrote rows; read after its commit, on the same thread.
        self._outbox_written = threading.local()

    def _store_submission(
        self, conn: Connection, submission: documents.Submission, seq: int
    ) -> None:
        """Insert a checked submission: its tasks take their turns in the fair order, and the
        notification rows its creation makes go in with it."""
        give_turns(conn, submission.tasks, {r.id: r for r in submission.records})
        records_db.insert_records(conn, submission.records, seq)
        tasks_db.insert_tasks(conn, submission.tasks, seq)
        self._notice_created(conn, submission.tasks, submission.records)

    def serving_at(self, url: str) -> None:
        """The web server listens at `url`: links point there unless `[web] base_url` says
        otherwise (the port may be one `--port` chose, not `[web] port`)."""
        if self.planner is not None and not self.settings.web.base_url:
            self.planner.base_url = url.rstrip("/")

    def add_outbox_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after each committed write that added notification rows."""
        self._outbox_listeners.append(callback)

    def _committed(self, seq: int, wake: str | None = None) -> None:
        super()._committed(seq, wake)
        if not getattr(self._outbox_written, "rows", False):
            return
        self._outbox_written.rows = False
        for callback in list(self._outbox_listeners):
            try:
                callback()
            except Exception:
                log.exception("outbox listener failed")

    def _insert_notices(self, conn: Connection, rows: list[NewNotification]) -> None:
        if rows:
            outbox_db.insert_notifications(conn, rows, time.time())
            self._outbox_written.rows = True

    # ---- the events ----------------------------------------------------------------------

    def _notice_created(
        self, conn: Connection, new_tasks: Sequence[Task], new_records: Iterable[Record] = ()
    ) -> None:
        """Tasks now waiting (submitted, or retried): `pending` statuses."""
        planner = self.planner
        if planner is None or not new_tasks:
            return
        records = {r.id: r for r in new_records}
        missing = {t.record_id for t in new_tasks} - set(records)
        records.update(notices_db.records_by_id(conn, missing))
        by_record: dict[str, list[Task]] = {}
        for task in new_tasks:
            by_record.setdefault(task.record_id, []).append(task)
        rows = [
            row
            for record_id, group in by_record.items()
            if record_id in records
            for row in planner.task_created(records[record_id], group)
        ]
        self._insert_notices(conn, rows)

    def _notice_retried(self, conn: Connection, task_ids: Sequence[str]) -> None:
        """Finished tasks back to waiting: `pending` statuses again."""
        if self.planner is not None and task_ids:
            self._notice_created(conn, list(notices_db.tasks_by_id(conn, task_ids).values()))

    def _notice_started(self, conn: Connection, task_ids: Sequence[str]) -> None:
        """Tasks now running: GitLab's `running` (the only channel with such a state)."""
        planner = self.planner
        if planner is None or not task_ids or self.settings.notify.gitlab is None:
            return
        found = notices_db.tasks_by_id(conn, task_ids)
        records = notices_db.records_by_id(conn, {t.record_id for t in found.values()})
        rows = [
            row
            for task in found.values()
            if task.record_id in records
            for row in planner.task_started(records[task.record_id], task)
        ]
        self._insert_notices(conn, rows)

    def _notice_finished(
        self, conn: Connection, task_ids: Sequence[str], lost: Collection[str] = ()
    ) -> None:
        """Tasks now in a final state (`lost`: those that failed because every node given them
        was lost); then each of their records that has no waiting or running task left."""
        planner = self.planner
        if planner is None or not task_ids:
            return
        found = notices_db.tasks_by_id(conn, task_ids)
        finished = [found[i] for i in task_ids if i in found and found[i].state.finished]
        if not finished:
            return
        records = notices_db.records_by_id(conn, {t.record_id for t in finished})
        rows = [
            row
            for task in finished
            if task.record_id in records
            for row in planner.task_finished(records[task.record_id], task, lost=task.id in lost)
        ]
        rows += self._records_finished(conn, planner, records)
        self._insert_notices(conn, rows)

    def _records_finished(
        self, conn: Connection, planner: Planner, records: dict[str, Record]
    ) -> list[NewNotification]:
        """The rows of each record whose last unfinished task just finished; the outcome of
        a record from a branch is remembered for the branch's next record (`when`)."""
        rows: list[NewNotification] = []
        unfinished = notices_db.unfinished_records(conn, records)
        for record_id in sorted(set(records) - unfinished):
            record = records[record_id]
            tasks = tasks_db.tasks_of_record(conn, record_id)
            branch = _branch_of(record)
            previous = branches_db.previous_outcome(conn, *branch) if branch else None
            rows += planner.record_finished(record, tasks, previous)
            if branch:
                outcome = record_outcome(tasks)
                branches_db.set_outcome(conn, *branch, record_id, outcome, time.time())
        return rows


def _branch_of(record: Record) -> tuple[str, str] | None:
    """(repository, ref) of a record made from a commit on a branch, else None."""
    repository, ref = record.extra.get("repository"), record.extra.get("ref")
    if isinstance(repository, str) and isinstance(ref, str) and repository and ref:
        return repository, ref
    return None
