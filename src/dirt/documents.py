"""Incoming documents (CLI, HTTP, _bulk_docs) and task results -> models, or every problem listed.

All input validation lives here; the service calls these before it writes anything.
"""

from __future__ import annotations

import base64
import json
import math
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dirt import requires
from dirt.errors import InputError, RequirementError, SubmissionError
from dirt.models import Attachment, Record, Task
from dirt.project import valid_task_name

MAX_ID_LENGTH = 200
MAX_ATTACHMENT_FILENAME = 255
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


def _is_number(value: Any) -> bool:
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
        if not _is_number(created):
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
        extra = self.extra(doc, RECORD_FIELDS, where)
        if problem or not isinstance(description, str):
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
        if timeout is not None and (not _is_number(timeout) or timeout <= 0):
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


class ResultError(ValueError):
    """A task's results break the contract; the message is the task's failure reason."""


def _clip(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_results(task_id: str, value: Any, now: float) -> tuple[dict[str, Any], list[Attachment]]:
    """Split a task's results into the stored dict and its attachments, or raise ResultError."""
    if not isinstance(value, dict) or not isinstance(value.get("success"), bool):
        raise ResultError(f"task returned {_clip(value)}; expected a dict with a boolean 'success'")
    results = dict(value)
    raw = results.pop("attachments", None) or []
    if not isinstance(raw, list):
        raise ResultError("'attachments' must be a list of {filename, contents, link_name}")
    attachments: list[Attachment] = []
    links = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        where = f"attachment {index + 1}"
        if not isinstance(item, dict):
            raise ResultError(f"{where}: expected an object, got {_clip(item, 60)}")
        filename = item.get("filename")
        if (
            not isinstance(filename, str)
            or not filename
            or filename in (".", "..")
            or any(c in filename for c in "/\\\0")
            or len(filename) > MAX_ATTACHMENT_FILENAME
        ):
            raise ResultError(f"{where}: 'filename' {_clip(filename, 60)} is not a plain file name")
        if filename in names:
            raise ResultError(f"{where}: two attachments are named {filename!r}")
        names.add(filename)
        contents = item.get("contents", "")
        if isinstance(contents, str):
            data = contents.encode("utf-8")
        elif isinstance(contents, bytes | bytearray):
            data = bytes(contents)
        else:
            raise ResultError(f"{where}: 'contents' must be str or bytes")
        link_name = item.get("link_name") or filename
        if not isinstance(link_name, str):
            raise ResultError(f"{where}: 'link_name' must be a string")
        content_type = mimetypes.guess_type(filename)[0] or (
            "text/plain" if isinstance(contents, str) else "application/octet-stream"
        )
        attachments.append(
            Attachment(task_id, filename, link_name, content_type, len(data), data, now)
        )
        links.append({"filename": filename, "link_name": link_name, "size": len(data)})
    if links:
        results["attachments"] = links
    try:
        json.dumps(results, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultError(f"results not JSON-serialisable: {exc}") from None
    return results, attachments


@dataclass(frozen=True)
class NodeAddress:
    """How to reach a node: `local` or `[user@]host[:port]` (an ssh_config alias counts)."""

    text: str
    host: str
    user: str | None = None
    port: int | None = None

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS and self.user is None and self.port is None


LOCAL_HOSTS = frozenset({"local", "localhost"})


def parse_address(text: Any) -> NodeAddress:
    """Parse `[user@]host[:port]`, or raise InputError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"node address {text!r} is empty")
    text = text.strip()
    user, _, hostport = text.rpartition("@")
    host, port_text = hostport, ""
    if hostport.startswith("["):  # [::1]:2222
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    problems = []
    if "@" in user or (user and not all(c.isalnum() or c in "._-" for c in user)):
        problems.append(f"node address {text!r}: user {user!r} is not a plain user name")
    if not host or any(c.isspace() or c in "/\\@" for c in host):
        problems.append(f"node address {text!r}: {host!r} is not a host name")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            problems.append(f"node address {text!r}: port {port_text!r} is not 1-65535")
        else:
            port = int(port_text)
    if problems:
        raise InputError("; ".join(problems))
    return NodeAddress(text=text, host=host, user=user or None, port=port)


# ---- the HTTP API's envelopes, page cursors, token names (issue 4) ---------------------------

RECORD_ENVELOPE_FIELDS = frozenset({"record", "tasks"})
TASKS_ENVELOPE_FIELDS = frozenset({"tasks"})


def _envelope_tasks(value: Any, record_id: Any, problems: list[str]) -> list[Any]:
    """Task documents of an envelope, with `type` and `record_id` filled in."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"'tasks' must be a list of task documents, got {type(value).__name__}")
        return []
    docs: list[Any] = []
    for index, doc in enumerate(value):
        if not isinstance(doc, dict):
            problems.append(f"tasks[{index}]: expected an object, got {type(doc).__name__}")
            continue
        if doc.get("type", "task") != "task":
            problems.append(f"tasks[{index}]: 'type' must be 'task', got {doc.get('type')!r}")
            continue
        if "record_id" in doc and doc["record_id"] != record_id:
            problems.append(
                f"tasks[{index}]: 'record_id' {doc['record_id']!r} is not the record "
                f"{record_id!r} it is submitted with"
            )
            continue
        docs.append({**doc, "type": "task", "record_id": record_id})
    return docs


def _unknown_keys(payload: dict[str, Any], known: frozenset[str], problems: list[str]) -> None:
    for key in sorted(set(payload) - known):
        problems.append(f"unknown field {key!r} (expected {', '.join(sorted(known))})")


def record_envelope(payload: Any) -> list[Any]:
    """`{"record": {...}, "tasks": [...]}` of POST /api/records -> documents, or SubmissionError."""
    if not isinstance(payload, dict):
        raise SubmissionError(
            [f'expected an object {{"record": {{...}}, "tasks": [...]}}, got {_kind(payload)}']
        )
    problems: list[str] = []
    _unknown_keys(payload, RECORD_ENVELOPE_FIELDS, problems)
    record = payload.get("record")
    if not isinstance(record, dict):
        problems.append(f"'record' must be an object, got {_kind(record)}")
        raise SubmissionError(problems)
    if record.get("type", "record") != "record":
        problems.append(f"record: 'type' must be 'record', got {record.get('type')!r}")
    docs: list[Any] = [{**record, "type": "record"}]
    docs.extend(_envelope_tasks(payload.get("tasks"), record.get("_id"), problems))
    if problems:
        raise SubmissionError(problems)
    return docs


def tasks_envelope(record_id: str, payload: Any) -> list[Any]:
    """`{"tasks": [...]}` of POST /api/records/{id}/tasks -> documents, or SubmissionError."""
    if not isinstance(payload, dict):
        raise SubmissionError([f'expected an object {{"tasks": [...]}}, got {_kind(payload)}'])
    problems: list[str] = []
    _unknown_keys(payload, TASKS_ENVELOPE_FIELDS, problems)
    if not payload.get("tasks"):
        problems.append("'tasks' must be a non-empty list of task documents")
    docs = _envelope_tasks(payload.get("tasks"), record_id, problems)
    if problems:
        raise SubmissionError(problems)
    return docs


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def make_cursor(created: float, item_id: str) -> str:
    """The opaque `before` cursor of a keyset page: where the previous page ended."""
    raw = json.dumps([created, item_id], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_cursor(text: str | None) -> tuple[float, str] | None:
    """A cursor made by `make_cursor`, or InputError naming the problem."""
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created, item_id = json.loads(raw)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InputError(f"'before' {text[:40]!r} is not a page cursor dirt made") from None
    if not _is_number(created) or not isinstance(item_id, str):
        raise InputError(f"'before' {text[:40]!r} is not a page cursor dirt made")
    return float(created), item_id


def token_name(value: Any) -> str:
    """A valid API token name (1-200 printable characters), or InputError."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_ID_LENGTH
        or not value.isprintable()
        or value != value.strip()
    ):
        raise InputError(f"token name {value!r} must be 1-{MAX_ID_LENGTH} printable characters")
    return value
