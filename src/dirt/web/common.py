"""Helpers the routes share: reading a JSON body within limits, JSON views of the models."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request

from dirt.models import Attachment, Attempt, Node, RecordSummary, Task
from dirt.service import Service

JSON_TYPES = ("application/json",)


def service_of(request: Request) -> Service:
    return request.app.state.service


async def read_json(request: Request) -> Any:
    """The request's JSON body: 415 when not JSON, 413 when too big, 400 when malformed."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in JSON_TYPES and not kind.endswith("+json"):
        raise HTTPException(
            415, f"send the body as JSON with 'Content-Type: application/json', not {kind!r}"
        )
    limit = request.app.state.settings.web.max_body_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the body is {length} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the body is over the limit of {limit} bytes")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None


def attachment_url(task_id: str, filename: str) -> str:
    return f"/api/tasks/{quote(task_id, safe='')}/attachments/{quote(filename, safe='')}"


def attachment_doc(a: Attachment) -> dict[str, Any]:
    return {
        "filename": a.filename,
        "link_name": a.link_name,
        "content_type": a.content_type,
        "size": a.size,
        "url": attachment_url(a.task_id, a.filename),
    }


def attempt_doc(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "node": a.node,
        "started": a.started,
        "completed": a.completed,
        "outcome": a.outcome,
        "reason": a.reason,
    }


def task_doc(
    task: Task,
    attachments: list[Attachment] | None = None,
    attempts: list[Attempt] | None = None,
) -> dict[str, Any]:
    doc = task.to_doc()
    doc["duration"] = task.duration
    if attachments is not None:
        doc["attachments"] = [attachment_doc(a) for a in attachments]
    if attempts is not None:
        doc["attempt_history"] = [attempt_doc(a) for a in attempts]
    return doc


def summary_doc(s: RecordSummary) -> dict[str, Any]:
    return {**s.record.to_doc(), "ntasks": s.ntasks, "counts": s.counts}


def node_doc(node: Node, running: int) -> dict[str, Any]:
    return {**node.to_doc(), "running": running}
