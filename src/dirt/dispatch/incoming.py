"""What arrives from a node for its running tasks before their outcomes: output chunks and
attachment chunks (see ``dirt/remote/protocol.py``).

All of it is handled on the connection's receiver thread as it comes, in bounded pieces: an
output chunk is handed on (the dispatcher stores it) and the last ``OUTPUT_TAIL`` bytes of it are
kept for the outcome; an attachment chunk is written to its upload in the blob store. When the
task's outcome comes, its uploads are committed (each becomes a blob, named by its sha256) and
its results name them, so the dispatcher stores the task and its attachments in one step. An
upload of a task whose node is lost is aborted: no blob appears, the task's retry uploads again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dirt.blobs import BlobError, BlobStore, BlobWriter
from dirt.remote.protocol import OUTCOME_FIELDS, OUTPUT_TAIL, decode_outcome, without_results
from dirt.remote.streams import DEFAULT_ATTACHMENT_LIMIT, DEFAULT_OUTPUT_LIMIT, human_size

log = logging.getLogger(__name__)

_OUTPUT = OUTCOME_FIELDS.index("output")

OnOutput = Callable[[str, int, bytes], None]  # task id, offset in its output, bytes


class _OverLimit(Exception):
    """A task's attachments are over [dispatch] attachment_limit."""


@dataclass(frozen=True)
class Limits:
    """Per task: stored output (head and tail kept beyond it) and attachments in all."""

    output: int = DEFAULT_OUTPUT_LIMIT
    attachments: int = DEFAULT_ATTACHMENT_LIMIT


@dataclass
class _Task:
    # (offset, bytes) of the output received within the last OUTPUT_TAIL bytes of it: the end
    # of a task's tail may come before its start (a node sends the newest bytes while the task
    # runs, and what lies before them when it ends)
    tail: list[tuple[int, bytes]] = field(default_factory=list)
    output_end: int = 0  # the end of the newest output received
    uploads: dict[int, BlobWriter] = field(default_factory=dict)
    attached: int = 0  # attachment bytes received
    error: str | None = None  # why the task's attachments cannot be stored


class Incoming:
    """The output and uploads of one connection's running tasks."""

    def __init__(self, blobs: BlobStore | None, limits: Limits, on_output: OnOutput | None) -> None:
        self.blobs = blobs
        self.limits = limits
        self.on_output = on_output
        self._tasks: dict[str, _Task] = {}

    def _task(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = _Task()
        return task

    def output(self, task_id: str, offset: int, data: bytes) -> None:
        task = self._task(task_id)
        self._output(task_id, task, offset, data)

    def _output(self, task_id: str, task: _Task, offset: int, data: bytes) -> None:
        if not data:
            return
        stop = offset + len(data)
        task.output_end = max(task.output_end, stop)
        kept = data[-OUTPUT_TAIL:]
        floor = task.output_end - OUTPUT_TAIL
        task.tail = [(o, d) for o, d in task.tail if o + len(d) > floor]
        task.tail.append((stop - len(kept), kept))
        if self.on_output is not None:
            self.on_output(task_id, offset, data)

    def blob(self, task_id: str, index: int, data: bytes) -> None:
        task = self._task(task_id)
        if task.error is not None:
            return  # refused already; the rest is dropped
        task.attached += len(data)
        if task.attached > self.limits.attachments:
            self._fail(task, self._over_limit())
            return
        if self.blobs is None:
            self._fail(task, "attachment not stored: this connection has no blob store")
            return
        try:
            writer = task.uploads.get(index)
            if writer is None:
                writer = task.uploads[index] = self.blobs.writer()
            writer.write(data)
        except BlobError as exc:
            self._fail(task, f"attachment not stored: {exc}")

    def _fail(self, task: _Task, error: str) -> None:
        task.error = error
        for writer in task.uploads.values():
            writer.abort()
        task.uploads.clear()

    def finish(self, task_id: str, wire: tuple[Any, ...]) -> tuple[tuple[Any, ...], str]:
        """The outcome as it came, with its attachments stored and named by blob, and the last
        ``OUTPUT_TAIL`` bytes of the task's output (decoded); the task is forgotten here."""
        task = self._tasks.pop(task_id, None) or _Task()
        wire = decode_outcome(wire)
        piece = wire[_OUTPUT]
        if isinstance(piece, str):
            piece = piece.encode("utf-8", "surrogateescape")
        self._output(task_id, task, task.output_end, piece)
        tail = decode_tail(_newest(task.tail))
        wire = (*wire[:_OUTPUT], b"")
        if wire[1] is None and task.error is None:
            try:
                wire = (self._store(task, wire[0]), *wire[1:])
            except BlobError as exc:
                task.error = f"attachment not stored: {exc}"
            except _OverLimit as exc:
                task.error = str(exc)
        if task.error is not None and wire[1] is None:
            wire = without_results(wire, task.error)
        for writer in task.uploads.values():
            writer.abort()  # not named by the results, or the task failed
        return wire, tail

    def _store(self, task: _Task, results: Any) -> Any:
        """`results` with every attachment's contents in the blob store, named by
        ``{"sha256", "size", "text"}`` under "blob" (without a blob store: as they came)."""
        items = results.get("attachments") if isinstance(results, dict) else None
        if not isinstance(items, list) or self.blobs is None:
            return results
        inline = sum(
            len(
                item["contents"].encode("utf-8")
                if isinstance(item["contents"], str)
                else item["contents"]
            )
            for item in items
            if isinstance(item, dict) and isinstance(item.get("contents"), str | bytes | bytearray)
        )
        if task.attached + inline > self.limits.attachments:
            raise _OverLimit(self._over_limit())
        stored = []
        for item in items:
            if isinstance(item, dict):
                item = {k: v for k, v in item.items() if k != "blob"}  # only ours is trusted
                index = item.pop("stream", None)
                if isinstance(index, int):
                    writer = task.uploads.pop(index, None) or self.blobs.writer()
                    sha, size = writer.commit()
                    item["blob"] = {"sha256": sha, "size": size, "text": bool(item.get("text"))}
                elif isinstance(item.get("contents"), str | bytes | bytearray):
                    contents = item.pop("contents")
                    text = isinstance(contents, str)
                    data = contents.encode("utf-8") if text else bytes(contents)
                    sha, size = self.blobs.put(data)
                    item["blob"] = {"sha256": sha, "size": size, "text": text}
                item.pop("text", None)
            stored.append(item)
        return {**results, "attachments": stored}

    def _over_limit(self) -> str:
        return (
            f"attachments over the limit of {human_size(self.limits.attachments)} "
            "([dispatch] attachment_limit)"
        )

    def abort(self, task_ids: list[str] | None = None) -> None:
        """Forget tasks (all, when None) whose outcome will not come: their uploads go."""
        for task_id in list(self._tasks) if task_ids is None else task_ids:
            task = self._tasks.pop(task_id, None)
            if task is not None:
                for writer in task.uploads.values():
                    writer.abort()


def _newest(pieces: list[tuple[int, bytes]]) -> bytes:
    """The last OUTPUT_TAIL bytes of the run of output that ends at the newest byte received
    (pieces may overlap or leave gaps: what lies before a gap was dropped on the node)."""
    run = bytearray()
    position = -1
    for offset, data in sorted(pieces):
        if offset > position:
            run = bytearray(data)  # a gap: bytes were dropped in between
        elif offset + len(data) > position:
            run += data[position - offset :]
        else:
            continue
        position = offset + len(data)
    return bytes(run[-OUTPUT_TAIL:])


def decode_tail(data: bytes) -> str:
    """Text of the last bytes of an output, which may begin inside a UTF-8 sequence."""
    start = 0
    while start < min(3, len(data)) and 0x80 <= data[start] < 0xC0:
        start += 1
    return data[start:].decode("utf-8", "replace")
