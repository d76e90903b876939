"""Streamed downloads: an attachment's bytes with HTTP Range support, and a task's output.

Nothing here holds a whole file or output: bytes are read and sent in chunks as the client takes
them. Ranges follow RFC 9110: one range (``bytes=A-B``, ``bytes=A-``, ``bytes=-N``) is answered
206 with Content-Range; a range past the end 416; a Range the server cannot serve as one part
(several ranges, another unit, nonsense) is ignored and the whole file sent, as the RFC allows;
``If-Range`` with an ETag other than the attachment's (its sha256) sends the whole file too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from dirt.service import AttachmentFile, Service
from dirt.web.security import attachment_headers

READ_SIZE = 256 * 1024
OUTPUT_BATCH = 4 << 20  # bytes of output read from the store at a time


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) byte of the one range asked for; None: send everything; "unsatisfiable"
    when no byte of the range exists."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first_text:  # the last N bytes
            suffix = int(last_text)
            if suffix <= 0:
                return "unsatisfiable"
            return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
        first = int(first_text)
        last = int(last_text) if last_text else max(first, size - 1)
    except ValueError:
        return None
    if first < 0 or last < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


def _read(file: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    try:
        file.seek(start)
        while length > 0:
            data = file.read(min(READ_SIZE, length))
            if not data:
                return
            length -= len(data)
            yield data
    finally:
        file.close()


def attachment_response(request: Request, opened: AttachmentFile) -> Response:
    """The attachment, whole or the one range asked for, streamed from its file."""
    attachment = opened.attachment
    size = attachment.size
    headers, media_type = attachment_headers(attachment)
    headers["Accept-Ranges"] = "bytes"
    etag = f'"{attachment.sha256}"' if attachment.sha256 else None
    if etag:
        headers["ETag"] = etag
    wanted = parse_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if wanted is not None and if_range is not None and if_range.strip() != etag:
        wanted = None  # the client's copy is of other contents: it gets the whole file
    if wanted == "unsatisfiable":
        opened.close()
        headers["Content-Range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    status, start, length = 200, 0, size
    if isinstance(wanted, tuple):
        first, last = wanted
        status, start, length = 206, first, last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(length)
    return StreamingResponse(
        _read(opened.file, start, length),
        status_code=status,
        media_type=media_type,
        headers=headers,
        background=BackgroundTask(opened.close),
    )


def output_response(service: Service, task_id: str, offset: int, attempt: int | None) -> Response:
    """A task's stored output from `offset` to where it ends now, with the headers of Jenkins'
    progressive text: X-Next-Offset (ask from there next), X-More-Data (true while the task
    runs or more is stored), X-Attempt (whose output it is)."""
    first = service.task_output(task_id, offset, attempt=attempt)
    end = max(first.end, first.next_offset)
    headers = {
        "X-Next-Offset": str(end),
        "X-More-Data": "true" if first.live else "false",
        "X-Attempt": str(first.attempt),
        "Cache-Control": "no-store",
    }

    def body() -> Iterator[bytes]:
        yield first.data
        position = first.next_offset
        while position < end:
            view = service.task_output(
                task_id, position, OUTPUT_BATCH, attempt=first.attempt, until=end
            )
            if not view.data:
                return
            yield view.data
            position = view.next_offset

    return StreamingResponse(body(), media_type="text/plain; charset=utf-8", headers=headers)
