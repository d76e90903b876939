"""Answers many readers repeat (the records list every page and dashboard polls), made once per
change of the store and served from memory until the next.

An answer is kept with the hub's change sequence value it was made at (`dirt.web.hub`) and
reused while it is not older than `ChangeHub.shown_seq`: writes through this process show at
once; other processes' within the hub's poll interval (a tenth of a second), or, while pages
hold event streams open, with the event that tells them (events come four times a second at
most).
A request with `Cache-Control: no-cache` checks the store itself. Requests that miss together
share one query.

`KeptAnswers` serves a kept answer before the framework sees the request: the exact path and
query string the route answered before (so only queries it validated), to a reader who needs no
token. Anything else goes to the route, which makes and keeps the answer.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from dirt.web.common import JSON, dumps, service_of

Key = tuple[str, bytes]  # (path, raw query string)
Kept = tuple[int, bytes]  # (the seq it was made at, the answer)


class AnswerCache:
    """Kept answers by (path, query string); used from the event loop only."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._answers: OrderedDict[Key, Kept] = OrderedDict()
        self._making: dict[tuple[Key, int], asyncio.Task[bytes]] = {}

    def kept(self, key: Key, oldest: int) -> Kept | None:
        """The kept answer for `key` made at `oldest` or later; None when there is none."""
        found = self._answers.get(key)
        if found is None or found[0] < oldest:
            return None
        self._answers.move_to_end(key)
        return found

    async def kept_or_coming(self, key: Key, oldest: int, seq: int) -> Kept | None:
        """The kept answer (made at `oldest` or later), or the one being made for `seq`
        (waited for); None when neither."""
        found = self.kept(key, oldest)
        if found is not None:
            return found
        task = self._making.get((key, seq))
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            return None
        try:
            return seq, await asyncio.shield(task)
        except Exception:  # the route makes it again and answers with the error
            return None

    async def answer(self, key: Key, oldest: int, seq: int, make: Callable[[], Any]) -> Kept:
        """The answer for `key`: kept (made at `oldest` or later), or made as of `seq` off the
        event loop (once for every request that asks meanwhile)."""
        found = self.kept(key, oldest)
        if found is not None:
            return found
        loop = asyncio.get_running_loop()
        task = self._making.get((key, seq))
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(run_in_threadpool(lambda: dumps(make())))
            self._making[(key, seq)] = task
            task.add_done_callback(lambda done: self._made(key, seq, done))
        return seq, await asyncio.shield(task)

    def _made(self, key: Key, seq: int, task: asyncio.Task[bytes]) -> None:
        self._making.pop((key, seq), None)
        if task.cancelled() or task.exception() is not None:
            return
        kept = self._answers.get(key)
        if kept is None or kept[0] <= seq:
            self._answers[key] = (seq, task.result())
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)


def _etag(seq: int) -> str:
    return f'W/"{seq}"'


def _headers(seq: int) -> dict[str, str]:
    return {"ETag": _etag(seq), "Cache-Control": "no-cache"}


def _answer(seq: int, body: bytes, if_none_match: str) -> Response:
    if _etag(seq) in if_none_match:
        return Response(status_code=304, headers=_headers(seq))
    return Response(body, media_type=JSON, headers=_headers(seq))


async def cached_json(request: Request, make: Callable[[], Any]) -> Response:
    """The answer of `make()` as JSON, kept (see the module's docstring), with an ETag: a
    client that has it gets 304."""
    cache: AnswerCache = request.app.state.answers
    hub = request.app.state.hub
    if "no-cache" in request.headers.get("cache-control", ""):
        hub.seen(await run_in_threadpool(service_of(request).current_seq))
    key = (request.url.path, request.scope.get("query_string", b""))
    seq, body = await cache.answer(key, hub.shown_seq, hub.seq, make)
    return _answer(seq, body, request.headers.get("if-none-match", ""))


class KeptAnswers:
    """ASGI middleware: a GET of `paths` whose answer is kept and current, from a reader who
    needs no token, is answered here without routing, validation or a thread."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] in self.paths:
            state = scope["app"].state
            headers = dict(scope["headers"])
            if b"no-cache" not in headers.get(b"cache-control", b"") and (
                state.access.reads_open or state.access.trusted_local(Request(scope))
            ):
                hub = state.hub
                key = (scope["path"], scope["query_string"])
                # Right after a change every reader misses at once: they wait for the one
                # answer being made rather than each going through the route.
                found = await state.answers.kept_or_coming(key, hub.shown_seq, hub.seq)
                if found is not None:
                    inm = headers.get(b"if-none-match", b"").decode("latin-1")
                    seq, body = found
                    await _answer(seq, body, inm)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
