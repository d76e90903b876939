"""Submissions of records and tasks in the original's document formats -> models, or every
problem listed at once."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dirt import requires
from dirt.errors import RequirementError, SubmissionError
from dirt.models import MAX_SHARE, Record, Task
from dirt.project import valid_task_name

MAX_ID_LENGTH = 200
# Fields dirt sets itself: a submission naming them is a mistake, not data to keep.
STATE_FIELDS = frozenset(
    {
        "state",
        "node",
        "started",
        "completed",
        "results",
        "reason",
        "attempts",
        "waiting_reason",
        "module_sha256",
        "output",
        "seq",
    }
)
RECORD_FIELDS = frozenset({"_id", "type", "description", "created"})
TASK_FIELDS = frozenset(
    {
        "_id",
        "type",
        "record_id",
        "name",
        "kwargs",
        "requires",
        "platform",
        "priority",
        "timeout",
        "max_attempts",
        "created",
    }
)
# CouchDB bookkeeping that clients copy along; it has no meaning here.
IGNORED_FIELDS = frozenset({"_rev", "_revisions", "_deleted", "_attachments"})


@dataclass
class Submission:
    records: list[Record] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)


def id_problem(value: Any, what: str) -> str | None:
    """Why `value` cannot be a record or task id, or None when it can."""
    if not isinstance(value, str) or not value:
        return f"{what} must be a non-empty string, got {value!r}"
    if len(value) > MAX_ID_LENGTH:
        return f"{what} {value[:40]!r}... is longer than {MAX_ID_LENGTH} characters"
    if any(c in value for c in "/\\?#%") or not value.isprintable() or value != value.strip():
        return (
            f"{what} {value!r} may not contain '/', '\\', '?', '#', '%', control characters "
            "or surrounding spaces"
        )
    return None


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def documents_of(payload: Any) -> list[Any]:
    """The original's two shapes: a JSON list of documents, or {"docs": [...]}."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and isinstance(docs := payload.get("docs"), list):
        return docs
    raise SubmissionError(
        [
            'expected a JSON list of documents or an object {"docs": [...]}, '
            f"got {type(payload).__name__}"
        ]
    )


class _Checker:
    """Collects every problem of one submission instead of stopping at the first."""

    def __init__(self, task_exists: Callable[[str], bool], now: float) -> None:
        self._task_exists = task_exists
        self._existing: dict[str, bool] = {}  # a submission names the same few modules often
        self.now = now
        self.problems: list[str] = []

    def task_exists(self, name: str) -> bool:
        if name not in self._existing:
            self._existing[name] = self._task_exists(name)
        return self._existing[name]

    def check_created(self, doc: dict[str, Any], where: str) -> float:
        created = doc.get("created", self.now)
        if not is_number(created):
            self.problems.append(f"{where}: 'created' must be epoch seconds, got {created!r}")
            return self.now
        seconds: float = created
        return seconds

    def extra(self, doc: dict[str, Any], known: frozenset[str], where: str) -> dict[str, Any]:
        extra = {}
        for key, value in doc.items():
            if key in known or key in IGNORED_FIELDS:
                continue
            if key in STATE_FIELDS:
                self.problems.append(f"{where}: '{key}' is set by dirt, not by a submission")
                continue
            extra[key] = value
        return extra

    def record(self, doc: dict[str, Any], where: str) -> Record | None:
        problem = id_problem(doc.get("_id"), "record '_id'")
        if problem:
            self.problems.append(f"{where}: {problem}")
        description = doc.get("description", "")
        if not isinstance(description, str):
            self.problems.append(f"{where}: 'description' must be a string")
        created = self.check_created(doc, where)
        share = doc.get("share", 1)
        bad_share = (
            not isinstance(share, int) or isinstance(share, bool) or not 1 <= share <= MAX_SHARE
        )
        if bad_share:
            self.problems.append(
                f"{where}: 'share' must be a whole number from 1 to {MAX_SHARE} (the turns the "
                f"record takes per round under fair order), got {share!r}"
            )
        # `share` stays among the extra fields, so the record reads back as it was sent.
        extra = self.extra(doc, RECORD_FIELDS, where)
        if problem or not isinstance(description, str) or bad_share:
            return None
        return Record(id=doc["_id"], description=description, created=created, extra=extra)

    def task(self, doc: dict[str, Any], where: str) -> Task | None:
        start = len(self.problems)
        task_id = doc.get("_id")
        if task_id is None:
            task_id = uuid.uuid4().hex
        elif problem := id_problem(task_id, "task '_id'"):
            self.problems.append(f"{where}: {problem}")
        record_id = doc.get("record_id")
        if record_id is None:
            self.problems.append(f"{where}: task has no 'record_id'")
        elif problem := id_problem(record_id, "'record_id'"):
            self.problems.append(f"{where}: {problem}")
        name = doc.get("name")
        if name is None:
            self.problems.append(f"{where}: task has no 'name'")
        elif not valid_task_name(name):
            self.problems.append(
                f"{where}: task name {name!r} is not a dotted Python identifier "
                "(like examples.simple)"
            )
        elif not self.task_exists(name):
            self.problems.append(
                f"{where}: task {name!r} is not a module under tasks/ "
                f"(expected tasks/{name.replace('.', '/')}.py)"
            )
        kwargs = doc.get("kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            self.problems.append(
                f"{where}: 'kwargs' must be an object, got {type(kwargs).__name__}"
            )
        requirements = self.requirements(doc.get("requires"), where)
        platform = doc.get("platform")
        if platform is not None and (
            not isinstance(platform, str) or requires.normalise_platform(platform) is None
        ):
            self.problems.append(
                f"{where}: 'platform' {platform!r} is not one of "
                f"{', '.join(sorted(requires.PLATFORM_ALIASES))}"
            )
        priority = doc.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            self.problems.append(f"{where}: 'priority' must be an integer, got {priority!r}")
        timeout = doc.get("timeout")
        if timeout is not None and (not is_number(timeout) or timeout <= 0):
            self.problems.append(
                f"{where}: 'timeout' must be a positive number of seconds, got {timeout!r}"
            )
        max_attempts = doc.get("max_attempts")
        if max_attempts is not None and (
            not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1
        ):
            self.problems.append(
                f"{where}: 'max_attempts' must be an integer >= 1, got {max_attempts!r}"
            )
        created = self.check_created(doc, where)
        extra = self.extra(doc, TASK_FIELDS, where)
        if len(self.problems) > start:
            return None
        assert isinstance(record_id, str) and isinstance(name, str)  # checked above
        return Task(
            id=task_id,
            record_id=record_id,
            name=name,
            kwargs=kwargs,
            requires=requirements,
            platform=platform,
            priority=priority,
            timeout=float(timeout) if timeout is not None else None,
            max_attempts=max_attempts,
            created=created,
            extra=extra,
        )

    def requirements(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problems.append(f"{where}: 'requires' must be a list of strings")
            return []
        for text in value:
            try:
                requires.parse(text)
            except RequirementError as exc:
                self.problems.append(f"{where}: {exc}")
        return value


def parse_submission(
    docs: Iterable[Any],
    *,
    task_exists: Callable[[str], bool],
    stored_record_ids: Callable[[set[str]], set[str]],
    stored_task_ids: Callable[[set[str]], set[str]],
    records_may_exist: bool = False,
    now: float | None = None,
) -> Submission:
    """Validate a whole submission; raise SubmissionError listing every problem.

    `stored_*_ids(ids)` return which of `ids` the store already holds. A record already stored
    is an error unless `records_may_exist` (then its document is dropped and tasks are added).
    """
    checker = _Checker(task_exists, time.time() if now is None else now)
    submission = Submission()
    seen: dict[str, str] = {}
    # Every task's record is checked, even a task with other problems: all problems at once.
    referenced: list[tuple[str, str]] = []
    for index, doc in enumerate(docs):
        where = f"document {index + 1}"
        if not isinstance(doc, dict):
            checker.problems.append(f"{where}: expected an object, got {type(doc).__name__}")
            continue
        if "_id" in doc and isinstance(doc["_id"], str):
            where = f"document {index + 1} ({doc['_id']})"
        kind = doc.get("type")
        if kind == "record":
            item: Record | Task | None = checker.record(doc, where)
        elif kind == "task":
            item = checker.task(doc, where)
            if isinstance(doc.get("record_id"), str):
                referenced.append((where, doc["record_id"]))
        else:
            checker.problems.append(f"{where}: unknown type {kind!r} (expected 'record' or 'task')")
            continue
        if item is None:
            continue
        if item.id in seen:
            checker.problems.append(f"{where}: duplicate id {item.id!r} in this submission")
            continue
        seen[item.id] = kind
        if isinstance(item, Record):
            submission.records.append(item)
        else:
            submission.tasks.append(item)

    record_ids = {r.id for r in submission.records}
    stored_records = stored_record_ids(record_ids | {rid for _, rid in referenced})
    if records_may_exist:
        submission.records = [r for r in submission.records if r.id not in stored_records]
    else:
        for record_id in sorted(record_ids & stored_records):
            checker.problems.append(
                f"record {record_id!r} already exists (add tasks to it with "
                f"`dirt submit {record_id} -t NAME`)"
            )
    for where, record_id in referenced:
        if record_id not in record_ids and record_id not in stored_records:
            checker.problems.append(
                f"{where}: record {record_id!r} exists neither in the store nor in this submission"
            )
    for task_id in sorted(stored_task_ids({t.id for t in submission.tasks})):
        checker.problems.append(f"task id {task_id!r} already exists")
    if not submission.records and not submission.tasks and not checker.problems:
        checker.problems.append("the submission holds no documents")
    if checker.problems:
        raise SubmissionError(checker.problems)
    return submission
