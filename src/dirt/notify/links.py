"""Links into dirt's web pages, from `[web] base_url`, and the short names used in messages."""

from __future__ import annotations

from urllib.parse import quote

from dirt.models import Record


def record_url(base_url: str, record_id: str) -> str:
    return f"{base_url.rstrip('/')}/records/{quote(record_id, safe='')}"


def task_url(base_url: str, record_id: str, task_id: str) -> str:
    """The task's row on its record's page."""
    return f"{record_url(base_url, record_id)}#task-{quote(task_id, safe='')}"


def short_id(record: Record) -> str:
    """A commit's short sha (10 hex), else the record id (clipped)."""
    sha = record.extra.get("sha")
    if isinstance(sha, str) and sha:
        return sha[:10]
    return record.id if len(record.id) <= 40 else record.id[:37] + "..."


def branch(record: Record) -> str | None:
    ref = record.extra.get("ref")
    if not isinstance(ref, str) or not ref:
        return None
    return ref.removeprefix("refs/heads/")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
