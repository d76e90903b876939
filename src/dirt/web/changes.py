"""The change feed over HTTP: the SSE stream of every open page and the long-polling feed.

The hub (`dirt.web.hub`) knows the newest change (at once through NOTIFY on PostgreSQL for
writes that wake) and makes the stream's events once for every stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dirt.service import Service
from dirt.web.auth import require_read
from dirt.web.common import dumps
from dirt.web.hub import ChangeHub, change_event

KEEPALIVE_S = 15.0
MAX_LONG_POLL_S = 60.0

router = APIRouter(dependencies=[Depends(require_read)])


def _hub(request: Request) -> ChangeHub:
    hub: ChangeHub = request.app.state.hub
    return hub


def _start_seq(request: Request, since: int | None) -> int:
    last_id = request.headers.get("last-event-id", "")
    if last_id.isdigit():
        return int(last_id)
    return since if since is not None else _hub(request).event_seq


@router.get("/events", tags=["changes"], summary="Server-Sent Events: the change feed, live")
async def events(request: Request, since: int | None = Query(None, ge=0)) -> StreamingResponse:
    """One `change` event per batch of writes (at most four a second):
    `{"seq": N, "changes": [...]}`; a change may show again in a later event."""
    hub = _hub(request)
    service: Service = request.app.state.service
    last = _start_seq(request, since)

    async def stream() -> AsyncIterator[bytes]:
        with hub.streaming():
            async for text in _stream():
                yield text

    async def _stream() -> AsyncIterator[bytes]:
        nonlocal last
        yield b"retry: 1000\nevent: hello\ndata: %s\n\n" % dumps({"seq": last})
        while not hub.stopped:
            found = hub.events_after(last)
            if found is None:  # from before what the hub keeps: catch up from the store
                event, last = await run_in_threadpool(change_event, service, last)
                if event is not None:
                    yield event.text
                continue
            if found:
                for event in found:
                    yield event.text
                last = found[-1].end
                continue
            # Else a wait for the next event would end at once, and again, and again.
            last = hub.shown_through(last)
            await hub.wait_event_beyond(last, KEEPALIVE_S)
            if hub.stopped or await request.is_disconnected():
                break
            if hub.event_seq <= last:
                yield b": keepalive\n\n"

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
