"""Helpers the routes share: the service, JSON answers made off the event loop (and kept while
the store does not change), reading a JSON body within limits.

The JSON views of the models are `dirt.views`, shared with the CLI.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from fastapi import HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from dirt.service import Service

JSON_TYPES = ("application/json",)
JSON = "application/json"


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class AnswerCache:
    """JSON answers by request, each kept with the change sequence value read before it was
    made: an answer is reused only while the store's sequence is still that value, so a reader
    never sees the store as it was before a write that committed before its request (its own
    included). Many readers of one list cost one query per change, not one per request."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._answers: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()

    def answer(self, service: Service, key: Hashable, make: Callable[[], Any]) -> tuple[int, bytes]:
        """(seq, body): the kept answer for `key` when the store has not changed, else `make()`
        as JSON, kept. Blocking: call it off the event loop."""
        seq = service.current_seq()
        with self._lock:
            found = self._answers.get(key)
            if found is not None and found[0] == seq:
                self._answers.move_to_end(key)
                return found
        body = dumps(make())
        with self._lock:
            self._answers[key] = (seq, body)
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
        return seq, body


async def cached_json(request: Request, key: Hashable, make: Callable[[], Any]) -> Response:
    """The answer of `make()` (run off the event loop) as JSON, kept while the store does not
    change; with an ETag, so a client that has it gets 304."""
    cache: AnswerCache = request.app.state.answers
    seq, body = await run_in_threadpool(cache.answer, service_of(request), key, make)
    etag = f'W/"{seq}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=JSON, headers=headers)


async def json_answer(make: Callable[[], Any], status: int = 200) -> Response:
    """`make()` (reads the store: run off the event loop) as JSON, serialised there too."""
    body = await run_in_threadpool(lambda: dumps(make()))
    return Response(body, status_code=status, media_type=JSON)


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


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
