"""Helpers the routes share: the service, JSON answers made off the event loop, reading a JSON
body within limits.

The JSON views of the models are `dirt.views`, shared with the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from dirt.service import Service

JSON_TYPES = ("application/json",)
JSON = "application/json"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def json_answer(make: Callable[[], Any], status: int = 200) -> Response:
    """`make()` (reads the store: run off the event loop) as JSON, serialised there too."""
    body = await run_in_threadpool(lambda: dumps(make()))
    return Response(body, status_code=status, media_type=JSON)


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def read_body(request: Request) -> bytes:
    """The request's body as it came (a signature is over these bytes): 413 when too big."""
    limit = request.app.state.settings.web.max_body_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the body is {length} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the body is over the limit of {limit} bytes")
    return bytes(body)


async def read_json(request: Request) -> Any:
    """The request's JSON body: 415 when not JSON, 413 when too big, 400 when malformed."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in JSON_TYPES and not kind.endswith("+json"):
        raise HTTPException(
            415, f"send the body as JSON with 'Content-Type: application/json', not {kind!r}"
        )
    body = await read_body(request)
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
