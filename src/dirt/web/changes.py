"""Change notification for the web: the hub, the SSE stream and the long-polling feed.

The hub knows the newest committed change sequence value. Writes made by this process reach it
at once through `Service.add_listener`; on PostgreSQL, writes of other processes that wake (a
submission, a cancel, a node change: see `Service._write`) reach it at once through NOTIFY
(`Service.watch`); the rest (a dispatcher's progress) are seen by polling the sequence every
`poll_interval` seconds. Waiters are asyncio events, so an open page holds no thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dirt.service import Service
from dirt.web.auth import require_read

log = logging.getLogger("dirt.web")

KEEPALIVE_S = 15.0
MAX_LONG_POLL_S = 60.0
SSE_MAX_CHANGES = 500


class ChangeHub:
    def __init__(self, service: Service, poll_interval: float = 0.2) -> None:
        self.service = service
        self.poll_interval = poll_interval
        self.seq = service.current_seq()
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        service.add_listener(self._advance)
        service.watch(self._notified)

    def _notified(self, seq: int | None, _topic: str | None) -> None:
        """NOTIFY from another process (on the service's listening thread); None: notices may
        have been missed while the store was away, so read the sequence."""
        if seq is not None:
            self._advance(seq)
            return
        try:
            self._advance(self.service.current_seq())
        except Exception as exc:  # the store may be busy or gone for a moment
            log.debug("change read failed: %s", exc)

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="dirt-web-changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake_all()
        if self._thread is not None:
            self._thread.join(5)

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            try:
                self._advance(self.service.current_seq())
            except Exception as exc:  # the store may be busy or gone for a moment
                log.debug("change poll failed: %s", exc)

    def _advance(self, seq: int) -> None:
        if self._stopping.is_set():
            return
        with self._lock:
            if seq <= self.seq:
                return
            self.seq = seq
        self._wake_all()

    def _wake_all(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(event.set)

    async def wait_beyond(self, seq: int, timeout: float) -> int:
        """Wait until the sequence passes `seq` (or `timeout`, or stop); the newest value."""
        event = asyncio.Event()
        item = (asyncio.get_running_loop(), event)
        with self._lock:
            if self.seq > seq or self.stopped:
                return self.seq
            self._waiters.add(item)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            with self._lock:
                self._waiters.discard(item)
        return self.seq


router = APIRouter(dependencies=[Depends(require_read)])


def _hub(request: Request) -> ChangeHub:
    hub: ChangeHub = request.app.state.hub
    return hub


def _start_seq(request: Request, since: int | None) -> int:
    last_id = request.headers.get("last-event-id", "")
    if last_id.isdigit():
        return int(last_id)
    return since if since is not None else _hub(request).seq


@router.get("/events", tags=["changes"], summary="Server-Sent Events: the change feed, live")
async def events(request: Request, since: int | None = Query(None, ge=0)) -> StreamingResponse:
    """One `change` event per batch of writes: `{"seq": N, "changes": [...]}`."""
    hub = _hub(request)
    service: Service = request.app.state.service
    last = _start_seq(request, since)

    async def stream() -> AsyncIterator[str]:
        nonlocal last
        yield f"retry: 1000\nevent: hello\ndata: {json.dumps({'seq': last})}\n\n"
        while not hub.stopped:
            seq = await hub.wait_beyond(last, KEEPALIVE_S)
            if hub.stopped or await request.is_disconnected():
                break
            if seq <= last:
                yield ": keepalive\n\n"
                continue
            changes, last = await run_in_threadpool(service.changes_since, last, 500)
            if changes:
                # One huge transaction (a 100,000-task submission) is sent in part: the page
                # refreshes on "truncated" whatever the changes were.
                shown = [c.to_doc() for c in changes[:SSE_MAX_CHANGES]]
                payload = {"seq": last, "changes": shown}
                if len(changes) > SSE_MAX_CHANGES:
                    payload["truncated"] = True
                data = json.dumps(payload)
                yield f"id: {last}\nevent: change\ndata: {data}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/api/changes", tags=["changes"], summary="The change feed (long-polling on request)")
async def changes(
    request: Request,
    since: int = Query(0, ge=0, description="Return changes after this sequence value."),
    timeout: float = Query(
        0, ge=0, le=MAX_LONG_POLL_S, description="Seconds to wait for a change when none yet."
    ),
    limit: int = Query(500, ge=1, le=5000),
) -> dict[str, Any]:
    """`{"results": [{"seq", "type", "id", ...}], "last_seq": N}`; ask again with since=last_seq."""
    hub = _hub(request)
    if timeout > 0 and hub.seq <= since:
        await hub.wait_beyond(since, timeout)
    service: Service = request.app.state.service
    found, last = await run_in_threadpool(service.changes_since, since, limit)
    return {"results": [c.to_doc() for c in found], "last_seq": last}
