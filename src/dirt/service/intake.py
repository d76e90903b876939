"""Idempotent intake: records from change sources (`dirt submit --git`, the post-receive hook,
forge webhooks, `dirt watch`), each taken at most once however often it is delivered.

`submit_new` runs in one write transaction: the delivery id is remembered (a replay makes
nothing), the watched file is remembered (never taken twice), records the store already holds
are dropped with their tasks ("record exists: add nothing"), the rest is checked and stored with
its notification rows. On SQLite that transaction holds the write lock from its start, so
nothing slips in between the look and the insert; on PostgreSQL dirt's writers serialise on the
change sequence's row. Should a record still appear between the look and the insert (another
writer), the insert fails on the records' primary key and the transaction runs once more,
which then drops the record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dirt import documents
from dirt.db import records as records_db
from dirt.db import sources as sources_db
from dirt.db import tasks as tasks_db
from dirt.db.sources import WatchedFile
from dirt.models import Record, Task
from dirt.service.base import log
from dirt.service.notices import Notices
from dirt.sources.push import Push, only_new, push_documents


@dataclass
class Taken:
    """What an intake stored, and what it left out."""

    records: list[Record] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # record ids the store already held
    replay: bool = False  # the delivery (or the watched file's content) was taken before
    ignored: list[str] = field(default_factory=list)  # refs left out of a push, and why


def _record_ids(docs: Sequence[Any]) -> list[str]:
    return [
        d["_id"]
        for d in docs
        if isinstance(d, dict) and d.get("type") == "record" and isinstance(d.get("_id"), str)
    ]


class _Looks:
    """Which records the store holds, each looked up once per transaction: the check and the
    insert go by one look, so a record another server stored in between (PostgreSQL reads
    what was committed since, statement by statement) fails the insert, and the transaction
    runs again, instead of failing the check."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.known: dict[str, bool] = {}

    def __call__(self, ids: set[str]) -> set[str]:
        unknown = ids - self.known.keys()
        if unknown:
            found = records_db.existing_record_ids(self.conn, unknown)
            self.known.update((i, i in found) for i in unknown)
        return {i for i in ids if self.known[i]}


class Intake(Notices):
    def submit_new(
        self,
        docs: Sequence[Any],
        *,
        delivery: tuple[str, str] | None = None,
        watched: tuple[str, WatchedFile] | None = None,
    ) -> Taken:
        """Store the records of `docs` that are new, with their tasks; records the store holds
        are left out with theirs. `delivery` (source, id): nothing when that delivery was
        taken before. `watched` (folder, file): nothing when that content was taken before.
        A submission with a problem is rejected whole (SubmissionError) and nothing is
        remembered, so a corrected delivery can be taken later."""

        def work(conn: Connection, seq: int) -> Taken:
            now = time.time()
            if delivery is not None and not sources_db.remember_delivery(conn, *delivery, now):
                return Taken(replay=True)
            if watched is not None and not sources_db.add_watched(conn, *watched, now):
                return Taken(replay=True)
            stored = _Looks(conn)
            fresh = only_new(docs, stored)
            kept = set(_record_ids(fresh))
            existing = [i for i in _record_ids(docs) if i not in kept]
            if not fresh:
                return Taken(existing=existing)
            submission = documents.parse_submission(
                fresh,
                task_exists=self.modules.exists,
                stored_record_ids=stored,
                stored_task_ids=lambda ids: tasks_db.existing_task_ids(conn, ids),
            )
            self._store_submission(conn, submission, seq)
            return Taken(submission.records, submission.tasks, existing)

        try:
            taken = self._write(work)
        except IntegrityError:
            # Another server stored one of these records (or this delivery) since we looked.
            taken = self._write(work)
        for record in taken.records:
            log.info(
                "Record %s added (%d task(s))",
                record.id,
                sum(t.record_id == record.id for t in taken.tasks),
            )
        for record_id in taken.existing:
            log.info("Record %s exists: nothing added", record_id)
        return taken

    def take_push(self, push: Push) -> Taken:
        """The records a verified push makes (`[ci]`: which refs, which commits, which tasks),
        taken once per delivery; refs outside `[ci] branches` are logged and left out."""
        ci = self.settings.ci
        made = push_documents(push, ci, time.time())
        if not made.documents:
            return Taken(ignored=made.ignored)
        if not ci.tasks:
            log.warning(
                "%s push to %s: [ci] tasks is empty, so its records get no tasks",
                push.source,
                push.repository,
            )
        delivery = (push.source, push.delivery) if push.delivery else None
        taken = self.submit_new(made.documents, delivery=delivery)
        taken.ignored = made.ignored
        if taken.replay:
            log.info("%s delivery %s was taken before: nothing made", push.source, push.delivery)
        return taken
