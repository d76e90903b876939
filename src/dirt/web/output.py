"""A task's output over HTTP: progressive text, as Jenkins serves a build's log, and a live
Server-Sent Events stream of it (the record page's output view reads that one)."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dirt.web.auth import require_read
from dirt.web.changes import KEEPALIVE_S
from dirt.web.common import service_of
from dirt.web.downloads import output_response
from dirt.web.hub import ChangeHub

router = APIRouter(prefix="/api", dependencies=[Depends(require_read)])

OUTPUT_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "An API token is needed"},
    404: {"description": "No such task, or no such attempt of it"},
}


@router.get(
    "/tasks/{task_id}/output",
    tags=["tasks"],
    summary="A task's stdout and stderr from byte `offset`, while it runs and after",
    response_class=Response,
    responses={
        **OUTPUT_ERRORS,
        200: {
            "description": "The output stored from `offset` on (text/plain). `X-Next-Offset`: "
            "ask from there next; `X-More-Data`: `true` while the task may write more; "
            "`X-Attempt`: the attempt the output is of. Output over `[dispatch] output_limit` "
            "is not kept: a line `[... N bytes truncated ...]` stands in for it (while the task "
            "runs, `[... N bytes not shown while the task runs ...]` stands for what it printed "
            "faster than about 1 MiB a second beyond its head: stored when it ends)."
        },
    },
)
def get_output(
    request: Request,
    task_id: str,
    offset: int = Query(0, ge=0, description="Byte offset in the output (`X-Next-Offset`)"),
    attempt: int | None = Query(None, ge=0, description="Default: the latest attempt"),
) -> Response:
    return output_response(service_of(request), task_id, offset, attempt)


def _event(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


@router.get(
    "/tasks/{task_id}/output/events",
    tags=["tasks"],
    summary="Server-Sent Events: a task's output as it arrives",
    responses=OUTPUT_ERRORS,
)
async def output_events(
    request: Request, task_id: str, offset: int = Query(0, ge=0)
) -> StreamingResponse:
    """`output` events `{"text", "offset"}` (the text from the previous offset to `offset`),
    `attempt` `{"attempt"}` when a new attempt starts (its output starts at 0), and `end`
    `{"state", "offset"}` once the task has finished and all its output was sent."""
    service = service_of(request)
    hub: ChangeHub = request.app.state.hub
    await run_in_threadpool(service.task, task_id)  # a 404 now, not an empty stream
    last_id = request.headers.get("last-event-id", "")
    start = int(last_id) if last_id.isdigit() else offset

    async def stream() -> AsyncIterator[str]:
        position = start
        attempt: int | None = None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        yield "retry: 1000\n\n"
        while not hub.stopped:
            seq = hub.seq
            view = await run_in_threadpool(service.task_output, task_id, position)
            if attempt is None:
                attempt = view.attempt
            elif view.attempt != attempt:
                attempt, position = view.attempt, 0
                decoder.reset()
                yield _event("attempt", {"attempt": attempt}, 0)
                continue
            if view.data:
                position = view.next_offset
                text = decoder.decode(view.data)
                yield _event("output", {"text": text, "offset": position}, position)
                if position < view.end:
                    continue  # more is stored: send it at once
            if not view.live:
                text = decoder.decode(b"", final=True)
                if text:
                    yield _event("output", {"text": text, "offset": position}, position)
                yield _event("end", {"state": view.state.value, "offset": position})
                return
            newest = await hub.wait_beyond(seq, KEEPALIVE_S)
            if hub.stopped or await request.is_disconnected():
                return
            if newest <= seq:
                yield ": keepalive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
