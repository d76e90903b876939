"""CouchDB's `_changes`: normal, longpoll, continuous and eventsource feeds.

Pages are keyset reads from a position (see `dirt.couch.revs`). A live feed waits on the web
app's ChangeHub, which hears this process's writes at once and polls the sequence for other
processes' writes: an open feed reads the store only when the sequence has moved, like the
pages' own event stream, and holds no thread while it waits.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from dirt.couch.errors import CouchError
from dirt.couch.revs import Position, encode_seq, parse_seq
from dirt.couch.store import ChangesPage, CouchStore
from dirt.web.changes import ChangeHub
from dirt.web.couchdb import auth
from dirt.web.couchdb.http import Params, read_object, store_of, stream_rows
from dirt.web.couchdb.server import not_implemented

# Feed names a client may send, and the feed each means ("live" is CouchDB's continuous).
FEEDS = {
    "normal": "normal",
    "longpoll": "longpoll",
    "continuous": "continuous",
    "live": "continuous",
    "eventsource": "eventsource",
}
PAGE = 500
DEFAULT_TIMEOUT_MS = 60_000
DEFAULT_HEARTBEAT_MS = 60_000
MIN_HEARTBEAT_S = 0.1
MAX_DOC_IDS = 100_000
STREAM_HEADERS = {"Cache-Control": "must-revalidate", "X-Accel-Buffering": "no"}

router = APIRouter(tags=["CouchDB"], include_in_schema=False)


@dataclass
class Feed:
    kind: str
    since: Position
    limit: int | None
    include: bool
    inline: bool
    doc_ids: list[str] | None
    descending: bool
    heartbeat: float | None  # seconds; a heartbeat keeps a feed open past `timeout`
    timeout: float  # seconds without changes before a live feed ends


def _doc_ids(params: Params, body: dict[str, Any]) -> list[str] | None:
    filter_name = params.text("filter")
    if filter_name is None:
        return None
    if filter_name == "_design":
        return []  # dirt has no design documents
    if filter_name != "_doc_ids":
        raise not_implemented(f"the {filter_name!r} filter (only _doc_ids and _design are)")
    ids = body.get("doc_ids", params.json("doc_ids"))
    if (
        not isinstance(ids, list)
        or len(ids) > MAX_DOC_IDS
        or not all(isinstance(i, str) for i in ids)
    ):
        raise CouchError(
            "bad_request", f"`doc_ids` must be a list of at most {MAX_DOC_IDS} document ids"
        )
    return ids


def parse_feed(request: Request, body: dict[str, Any], now: int) -> Feed:
    params = Params(request)
    kind = FEEDS.get(params.text("feed") or "normal")
    if kind is None:
        raise CouchError(
            "bad_request", "Supported `feed` types: normal, longpoll, continuous, eventsource"
        )
    if params.text("style", "main_only") not in ("main_only", "all_docs"):
        raise CouchError("bad_request", "`style` must be main_only or all_docs")
    since = params.text("since") or "0"
    last_event = request.headers.get("last-event-id")
    if kind == "eventsource" and last_event:
        since = last_event
    heartbeat: float | None = None
    if "heartbeat" in params:
        text = params.text("heartbeat") or ""
        ms = DEFAULT_HEARTBEAT_MS if text == "true" else params.integer("heartbeat", 0)
        heartbeat = max(MIN_HEARTBEAT_S, ms / 1000) if text != "false" else None
    descending = params.flag("descending")
    if descending and kind != "normal":
        raise CouchError("bad_request", "descending=true needs feed=normal")
    limit = params.integer("limit", -1) if "limit" in params else None
    return Feed(
        kind=kind,
        since=parse_seq(since, now),
        limit=None if limit is None else max(limit, 1),
        include=params.flag("include_docs"),
        inline=params.flag("attachments"),
        doc_ids=_doc_ids(params, body),
        descending=descending,
        heartbeat=heartbeat,
        timeout=params.integer("timeout", DEFAULT_TIMEOUT_MS) / 1000,
    )


def _rows(store: CouchStore, page: ChangesPage, feed: Feed) -> list[dict[str, Any]]:
    docs = store.render(page.docs, inline=feed.inline) if feed.include else None
    rows = []
    for index, (doc, position) in enumerate(zip(page.docs, page.positions, strict=True)):
        row: dict[str, Any] = {
            "seq": encode_seq(position),
            "id": doc.row.id,
            "changes": [{"rev": doc.rev}],
        }
        if docs is not None:
            row["doc"] = docs[index]
        rows.append(row)
    return rows


class Reader:
    """Reads pages of one feed in a worker thread, keeping where it stands."""

    def __init__(self, store: CouchStore, feed: Feed) -> None:
        self.store = store
        self.feed = feed
        self.position = feed.since
        self.sent = 0
        self.pending: int | None = 0

    @property
    def wanted(self) -> int:
        return PAGE if self.feed.limit is None else min(PAGE, self.feed.limit - self.sent)

    @property
    def done(self) -> bool:
        return self.feed.limit is not None and self.sent >= self.feed.limit

    async def read(self) -> tuple[list[dict[str, Any]], bool]:
        """The next page's rows, and whether the feed has caught up with the store."""
        wanted = self.wanted

        def work() -> tuple[ChangesPage, list[dict[str, Any]]]:
            page = self.store.changes(self.position, wanted, self.feed.doc_ids, self.feed.include)
            return page, _rows(self.store, page, self.feed)

        page, rows = await run_in_threadpool(work)
        self.position, self.pending = page.last, page.pending
        self.sent += len(rows)
        return rows, len(rows) < wanted

    def tail(self) -> dict[str, Any]:
        ending: dict[str, Any] = {"last_seq": encode_seq(self.position)}
        if self.pending is not None:
            ending["pending"] = self.pending
        return ending


def _hub(request: Request) -> ChangeHub:
    hub: ChangeHub = request.app.state.hub
    return hub


@router.api_route("/_changes", methods=["GET", "POST"], dependencies=[Depends(auth.require_read)])
async def changes(request: Request) -> Response:
    body = await read_object(request) if request.method == "POST" else {}
    store = store_of(request)
    hub = _hub(request)
    asks_now = "now" in (Params(request).text("since"), request.headers.get("last-event-id"))
    feed = parse_feed(request, body, await run_in_threadpool(store.current) if asks_now else 0)
    if feed.kind == "normal" and feed.descending:
        return await _descending(store, feed)
    reader = Reader(store, feed)
    first, caught_up = await reader.read()
    if feed.kind == "normal":
        return StreamingResponse(
            stream_rows({}, _normal_pages(reader, first, caught_up), "results", reader.tail),
            media_type="application/json",
            headers=STREAM_HEADERS,
        )
    if feed.kind == "longpoll":
        return StreamingResponse(
            _longpoll(hub, reader, first), media_type="application/json", headers=STREAM_HEADERS
        )
    events = feed.kind == "eventsource"
    return StreamingResponse(
        _live(hub, reader, first, caught_up, events),
        media_type="text/event-stream" if events else "application/json",
        headers=STREAM_HEADERS,
    )


async def _descending(store: CouchStore, feed: Feed) -> Response:
    def work() -> dict[str, Any]:
        limit = feed.limit if feed.limit is not None else 2**62
        page = store.newest_changes(limit, feed.doc_ids, feed.include)
        return {"results": _rows(store, page, feed), "last_seq": encode_seq(page.last)}

    body = await run_in_threadpool(work)
    return StreamingResponse(
        stream_rows({}, _one(body["results"]), "results", lambda: {"last_seq": body["last_seq"]}),
        media_type="application/json",
    )


async def _one(rows: list[Any]) -> AsyncIterator[list[Any]]:
    yield rows


async def _normal_pages(
    reader: Reader, first: list[dict[str, Any]], caught_up: bool
) -> AsyncIterator[list[Any]]:
    yield first
    while not caught_up and not reader.done:
        rows, caught_up = await reader.read()
        yield rows


async def _wait(hub: ChangeHub, reader: Reader, seconds: float) -> bool:
    """Wait up to `seconds` for a write after where the reader stands; True when one came."""
    beyond = reader.position.seq
    return await hub.wait_beyond(beyond, max(seconds, 0.0)) > beyond and not hub.stopped


async def _longpoll(
    hub: ChangeHub, reader: Reader, first: list[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """One page: at once when there are changes, else after the first write or the timeout."""
    rows = first
    deadline = time.monotonic() + reader.feed.timeout
    heartbeat = reader.feed.heartbeat
    while not rows and not hub.stopped:
        left = deadline - time.monotonic()
        if left <= 0 and heartbeat is None:
            break
        if await _wait(hub, reader, min(left, heartbeat) if heartbeat else left):
            rows, _ = await reader.read()
        elif heartbeat is not None:
            yield b"\n"
    body = {"results": rows, **reader.tail()}
    yield (json.dumps(body, separators=(",", ":")) + "\n").encode()


def _line(row: dict[str, Any], events: bool) -> bytes:
    data = json.dumps(row, separators=(",", ":"))
    return f"data: {data}\nid: {row['seq']}\n\n".encode() if events else (data + "\n").encode()


async def _live(
    hub: ChangeHub, reader: Reader, first: list[dict[str, Any]], caught_up: bool, events: bool
) -> AsyncIterator[bytes]:
    """Every change as its own line (or event), then waiting for more, until the limit, the
    timeout without changes (a heartbeat lifts it), or the server stopping."""
    rows = first
    idle_since = time.monotonic()
    heartbeat = reader.feed.heartbeat
    while True:
        for row in rows:
            yield _line(row, events)
        if rows:
            idle_since = time.monotonic()
        if reader.done or hub.stopped:
            break
        if not caught_up:
            rows, caught_up = await reader.read()
            continue
        left = reader.feed.timeout - (time.monotonic() - idle_since)
        if heartbeat is None and left <= 0:
            break
        if await _wait(hub, reader, heartbeat if heartbeat is not None else left):
            rows, caught_up = await reader.read()
        else:
            rows = []
            if heartbeat is not None:
                yield b"event: heartbeat\ndata: \n\n" if events else b"\n"
    if not events:
        yield (json.dumps(reader.tail(), separators=(",", ":")) + "\n").encode()
