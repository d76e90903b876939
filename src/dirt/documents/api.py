"""What the HTTP API takes besides plain documents: the envelopes of POST /api/records and
/api/records/{id}/tasks, page cursors, API token names and scopes, and points in time."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Any

from dirt.documents.submission import MAX_ID_LENGTH, is_number
from dirt.errors import InputError, SubmissionError
from dirt.models import TokenScope

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
    if not is_number(created) or not isinstance(item_id, str):
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


def token_scope(value: Any) -> TokenScope:
    """A token scope by its name ("read", "api"), or InputError listing them."""
    try:
        return TokenScope(value)
    except ValueError:
        names = ", ".join(s.value for s in TokenScope)
        raise InputError(f"token scope {value!r} is not one of {names}") from None


_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """A point in time as epoch seconds: `30m`, `2h`, `7d`, `1w` ago; an ISO date or date and
    time (`2024-05-01`, `2024-05-01T12:00`, local time unless it has an offset); or epoch
    seconds. InputError names what is accepted."""
    value = text.strip()
    found = _AGO.match(value)
    if found:
        return now - float(found.group(1)) * _SECONDS[found.group(2)]
    if is_number_text(value):
        return float(value)
    try:
        return datetime.fromisoformat(value.replace(" ", "T", 1)).timestamp()
    except ValueError:
        raise InputError(
            f"--since {text!r}: give a time ago (30m, 2h, 7d, 1w), a date or date and time "
            "(2024-05-01, 2024-05-01T12:00) or epoch seconds"
        ) from None


def is_number_text(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return value.replace(".", "", 1).isdigit()
