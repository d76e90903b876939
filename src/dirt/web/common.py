"""Helpers the routes share: the service, JSON answers made off the event loop (and kept while
the store does not change), reading a JSON body within limits.

The JSON views of the models are `dirt.views`, shared with the CLI.
"""

from __future__ import annotations

import asyncio
import json
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
    """JSON answers by request, kept with the change sequence value they were made at.

    An answer is reused while the hub's sequence (`dirt.web.hub`) has not moved: writes through
    this process show at once, other processes' within the hub's poll interval (a tenth of a
    second); a request with `Cache-Control: no-cache` checks the store itself. Many readers of
    one list cost one query per change, and requests that miss together share one query.
    Used from the event loop only.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._answers: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()
        self._making: dict[tuple[Hashable, int], asyncio.Task[bytes]] = {}

    def kept(self, key: Hashable, seq: int) -> bytes | None:
        found = self._answers.get(key)
        if found is None or found[0] != seq:
            return None
        self._answers.move_to_end(key)
        return found[1]

    async def answer(self, key: Hashable, seq: int, make: Callable[[], Any]) -> bytes:
        """The answer for `key` as of `seq`: kept, or made off the event loop (once for every
        request that asks meanwhile)."""
        found = self.kept(key, seq)
        if found is not None:
            return found
        loop = asyncio.get_running_loop()
        task = self._making.get((key, seq))
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(run_in_threadpool(lambda: dumps(make())))
            self._making[(key, seq)] = task
            task.add_done_callback(lambda done: self._made(key, seq, done))
        return await asyncio.shield(task)

    def _made(self, key: Hashable, seq: int, task: asyncio.Task[bytes]) -> None:
        self._making.pop((key, seq), None)
        if task.cancelled() or task.exception() is not None:
            return
        kept = self._answers.get(key)
        if kept is None or kept[0] <= seq:
            self._answers[key] = (seq, task.result())
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)


async def cached_json(request: Request, key: Hashable, make: Callable[[], Any]) -> Response:
    """The answer of `make()` as JSON (see AnswerCache), with an ETag: a client that has it
    gets 304."""
    cache: AnswerCache = request.app.state.answers
    hub = request.app.state.hub
    if "no-cache" in request.headers.get("cache-control", ""):
        hub.seen(await run_in_threadpool(service_of(request).current_seq))
    seq: int = hub.seq
    body = await cache.answer(key, seq, make)
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
