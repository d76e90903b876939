"""Node-side streaming: a task's output kept within its limit and cut into chunks, a task's
attachments sized and checked before they travel, and the fair queue that interleaves many
tasks' chunks on one link.

Stdlib only; shipped after ``protocol.py`` and ``tasking.py`` in the agent's and the fork
server's source (see ``dirt.remote.source``).
"""

from __future__ import annotations

import marshal
import os
import stat
from collections import deque

from dirt.remote.protocol import (
    BLOB,
    CHUNK_SIZE,
    RESULT,
    TYPE_CHECKING,
    encode,
    frame,
    unserialisable_type,
)

if TYPE_CHECKING:
    from typing import Any

# What the master's [dispatch] output_limit and attachment_limit default to.
DEFAULT_OUTPUT_LIMIT = 16 << 20
DEFAULT_ATTACHMENT_LIMIT = 4 << 30
# Output of the head waits at most this long before it is sent (so a running task's output
# reaches the master within about a second, as the output view promises).
FLUSH_AFTER = 0.5
# Beyond the head, only the newest output is kept (the tail); while the task runs, the newest of
# it goes this often, at most LIVE_TAIL bytes each time: however fast a task prints, what crosses
# the wire stays bounded (about a chunk a second), and the task is never slowed by it.
TAIL_EVERY = 1.0
LIVE_TAIL = CHUNK_SIZE
# Attachment contents up to this size travel inside the results; bigger ones in chunks.
INLINE_LIMIT = 256 * 1024


class OutputBuffer:
    """One task's stdout and stderr on its way to the master, kept within `limit` bytes.

    The first half of the limit (the head) is sent as it comes, in chunks of at most
    ``CHUNK_SIZE``, at latest ``FLUSH_AFTER`` seconds after it was written. Beyond the head
    only the newest half (the tail) is kept, in a ring. While the task runs, the newest bytes
    not sent yet go every ``TAIL_EVERY`` seconds, at most ``LIVE_TAIL`` of them (a live view:
    however fast a task prints, about a chunk a second crosses the wire); when it ends, what
    the tail holds that did not go yet follows. The bytes dropped from the ring never leave the
    node. Each chunk carries its offset in the whole stream, so the master sees where bytes
    were dropped; chunks never overlap. Feeding and taking are linear in the bytes.
    """

    __slots__ = (
        "head",
        "head_q",
        "head_since",
        "head_size",
        "live",
        "live_end",
        "sent",
        "tail",
        "tail_q",
        "tail_since",
        "tail_size",
        "total",
    )

    def __init__(self, limit: int) -> None:
        self.head = limit // 2
        self.tail = limit - self.head
        self.total = 0  # bytes the task wrote
        self.sent = 0  # end offset of the last chunk taken
        self.head_q: deque[bytes] = deque()  # pending, all before `head`
        self.head_size = 0
        self.head_since = 0.0
        # The ring: the newest bytes from `head` on (about `tail` of them), ending at `total`.
        self.tail_q: deque[bytes] = deque()
        self.tail_size = 0
        self.tail_since = 0.0  # when the oldest byte not yet sent live came
        # (start, stop) of what went live from the ring, oldest first, while in the ring
        self.live: deque[tuple[int, int]] = deque()
        self.live_end = 0

    def feed(self, data: bytes, now: float) -> None:
        """Take bytes the task wrote."""
        size = len(data)
        if not size:
            return
        before = self.total
        room = self.head - before
        self.total = before + size
        if room > 0:
            part = data if size <= room else data[:room]
            if not self.head_q:
                self.head_since = now
            self.head_q.append(part)
            self.head_size += len(part)
            if size <= room:
                return
            data = data[room:]
            before = self.head
        if before <= self._live_from():  # nothing was waiting to go live
            self.tail_since = now
        self.tail_q.append(data)
        self.tail_size += len(data)
        queue = self.tail_q
        while self.tail_size - len(queue[0]) >= self.tail:
            self.tail_size -= len(queue.popleft())

    def _live_from(self) -> int:
        return max(self.head, self.live_end)

    @property
    def pending(self) -> int:
        """Bytes waiting for their time to go."""
        return self.head_size + min(self.tail_size, max(0, self.total - self._live_from()))

    def due_at(self) -> float | None:
        """When `take` next has something to send (monotonic time), or None."""
        if self.head_size >= CHUNK_SIZE:
            return 0.0
        times = []
        if self.head_q:
            times.append(self.head_since + FLUSH_AFTER)
        if self.total > self._live_from():
            times.append(self.tail_since + TAIL_EVERY)
        return min(times) if times else None

    def take(self, now: float, final: bool = False) -> list[tuple[int, bytes]]:
        """(offset, chunk) pairs due now (everything, when `final`), in stream order."""
        chunks: list[tuple[int, bytes]] = []
        if self.head_q:
            # Once the head is complete (or old enough) it goes whole; before, only whole
            # chunks go and a last partial one waits for its time.
            whole = final or self.total > self.head or now >= self.head_since + FLUSH_AFTER
            if whole or self.head_size >= CHUNK_SIZE:
                start = min(self.total, self.head) - self.head_size
                self.head_size -= self._cut(self.head_q, start, chunks, whole)
                self.head_since = now
        if self.head_q or not self.tail_q:
            pass  # the ring's bytes follow the whole head
        elif final:
            for first, stop in self._unsent():
                self._cut(deque([self._ring(first, stop)]), first, chunks, True)
            self.tail_q.clear()
            self.tail_size = 0
            self.live.clear()
            self.live_end = self.total
        elif self.total > self._live_from() and now >= self.tail_since + TAIL_EVERY:
            first = max(self._live_from(), self.total - LIVE_TAIL, self.total - self.tail_size)
            self._cut(deque([self._ring(first, self.total)]), first, chunks, True)
            if self.live and self.live[-1][1] == first:
                self.live[-1] = (self.live[-1][0], self.total)
            else:
                self.live.append((first, self.total))
            self.live_end = self.total
            ring_start = self.total - self.tail_size
            while self.live and self.live[0][1] <= ring_start:
                self.live.popleft()
        if chunks:
            last_offset, last = chunks[-1]
            self.sent = last_offset + len(last)
        return chunks

    def _unsent(self) -> list[tuple[int, int]]:
        """The ranges of the tail (the last `tail` bytes beyond the head) not sent live."""
        position = self.total - min(self.tail_size, self.tail)
        ranges = []
        for first, stop in self.live:
            if stop <= position:
                continue
            if first > position:
                ranges.append((position, first))
            position = stop
        if position < self.total:
            ranges.append((position, self.total))
        return ranges

    def _ring(self, first: int, stop: int) -> bytes:
        """Bytes `first` to `stop` of the stream, which the ring holds."""
        parts = []
        end = self.total
        for piece in reversed(self.tail_q):
            start = end - len(piece)
            if start < stop:
                parts.append(piece[max(0, first - start) : stop - start])
            if start <= first:
                break
            end = start
        parts.reverse()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def final(self) -> tuple[list[tuple[int, bytes]], bytes]:
        """Everything still pending, as (chunks, last piece): the last piece rides in the DONE
        message when it follows what went before without a gap (the master puts it after the
        last chunk it got); else it is b"" and every byte is in `chunks`."""
        before = self.sent
        chunks = self.take(0.0, final=True)
        if not chunks:
            return chunks, b""
        offset, data = chunks[-1]
        # The master puts the piece after the newest byte it got, which may be a live chunk
        # sent before the gaps these chunks fill in.
        previous = max(before, chunks[-2][0] + len(chunks[-2][1]) if len(chunks) > 1 else 0)
        if offset != previous:
            return chunks, b""
        chunks.pop()
        return chunks, data

    @staticmethod
    def _cut(queue: deque[bytes], offset: int, chunks: list[tuple[int, bytes]], whole: bool) -> int:
        """Move the pieces of `queue` (starting at stream `offset`) into chunks of at most
        CHUNK_SIZE; unless `whole`, a final piece shorter than a chunk stays queued. Returns
        the bytes moved."""
        moved = 0
        while queue:
            size = 0
            parts: list[bytes] = []
            while queue and size < CHUNK_SIZE:
                piece = queue[0]
                room = CHUNK_SIZE - size
                if len(piece) > room:
                    parts.append(piece[:room])
                    queue[0] = piece[room:]
                    size += room
                else:
                    parts.append(queue.popleft())
                    size += len(piece)
            if size < CHUNK_SIZE and not whole:
                queue.extendleft(reversed(parts))
                break
            chunks.append((offset, parts[0] if len(parts) == 1 else b"".join(parts)))
            offset += size
            moved += size
        return moved


# attachments ---------------------------------------------------------------------------------


class AttachmentError(Exception):
    """A task's attachments cannot be sent: the message is the task's failure reason."""


def human_size(size: int) -> str:
    """``4 GiB``, ``1.5 MiB``, ``300 bytes``."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "bytes":
                return f"{size} bytes"
            return f"{value:.1f} {unit}".replace(".0 ", " ")
        value /= 1024
    return f"{size} bytes"  # pragma: no cover


def prepare_attachments(results: Any, limit: int) -> tuple[Any, dict[int, bytes]]:
    """Ready a task's attachments to travel; returns (results, big contents by index).

    Contents of at most ``INLINE_LIMIT`` bytes stay in the results. Bigger contents are taken
    out (the item gets ``"stream": index`` and ``"text"``) to be sent in chunks. A ``path`` is
    made absolute (the task's working directory is gone once it ends) and sized (the size a
    file says it has; the agent reads it to its end). Raises
    AttachmentError when a file cannot be read or the total is over `limit`. Anything else
    about the results is for the master to judge.
    """
    if not isinstance(results, dict):
        return results, {}
    items = results.get("attachments")
    if not isinstance(items, list) or not items:
        return results, {}
    big: dict[int, bytes] = {}
    total = 0
    prepared: list[Any] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            prepared.append(item)
            continue
        item = dict(item)
        # Only the node says what travels in chunks.
        item.pop("stream", None)
        item.pop("blob", None)
        item.pop("size", None)
        if "contents" not in item and "path" in item:
            item["path"], size = _sized_path(item, index)
            item["size"] = size
            total += size
        else:
            contents = item.get("contents", "")
            if isinstance(contents, str):
                data = contents.encode("utf-8", "surrogateescape")
            elif isinstance(contents, (bytes, bytearray, memoryview)):
                data = bytes(contents)
            else:
                prepared.append(item)  # the master names the type
                continue
            total += len(data)
            if len(data) > INLINE_LIMIT:
                item["text"] = isinstance(contents, str)
                del item["contents"]
                item["stream"] = index
                big[index] = data
        prepared.append(item)
    if total > limit:
        raise AttachmentError(
            f"attachments total {human_size(total)}, over the limit of {human_size(limit)} "
            "([dispatch] attachment_limit)"
        )
    return {**results, "attachments": prepared}, big


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send_results(fd: int, results: Any, error: str | None, limit: int) -> None:
    """In a task's process: its big attachment contents in chunks, then its results, as frames
    on its result pipe (see protocol.py)."""
    big: dict[int, bytes] = {}
    if error is None:
        try:
            results, big = prepare_attachments(results, limit)
        except AttachmentError as exc:
            results, error = None, str(exc)
    try:
        data = marshal.dumps((RESULT, results, error))
        if error is None and unserialisable_type(results) is not None:
            # marshal also takes sets and code objects; the master side cannot.
            raise ValueError
    except Exception:
        name = unserialisable_type(results) or type(results).__name__
        big = {}
        data = marshal.dumps((RESULT, None, f"results not serialisable: {name}"))
    for index, contents in big.items():
        view = memoryview(contents)
        for start in range(0, len(contents), CHUNK_SIZE):
            write_all(fd, encode((BLOB, index, view[start : start + CHUNK_SIZE])))
    write_all(fd, frame(data))


def _sized_path(item: dict[str, Any], index: int) -> tuple[str, int]:
    name = item.get("filename")
    where = f"attachment {index + 1}" + (f" ({name})" if isinstance(name, str) else "")
    path = item["path"]
    try:
        path = os.path.abspath(os.fspath(path))
        info = os.stat(path)
    except TypeError:
        raise AttachmentError(
            f"{where}: 'path' must be a string, not {type(path).__name__}"
        ) from None
    except OSError as exc:
        raise AttachmentError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise AttachmentError(f"{where}: {path} is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise AttachmentError(f"{where}: cannot read {path}: permission denied")
    return path, info.st_size


# the fair queue ------------------------------------------------------------------------------


class FairQueue:
    """Messages on their way over one link: each task's in the order they were put, the tasks
    taking turns one message at a time, and urgent messages (of no task) before all of them.

    So a big transfer holds back another task's message by at most one chunk. `size` counts the
    bytes queued, for flow control by the caller.
    """

    def __init__(self) -> None:
        self.urgent: deque[Any] = deque()
        self.tasks: dict[str, deque[tuple[Any, int]]] = {}
        self.turns: deque[str] = deque()  # task ids with something queued, in turn order
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self.urgent or self.turns)

    def put(self, item: Any, task_id: str | None = None, size: int = 0) -> None:
        if task_id is None:
            self.urgent.append(item)
            return
        queue = self.tasks.get(task_id)
        if queue is None:
            queue = self.tasks[task_id] = deque()
            self.turns.append(task_id)
        queue.append((item, size))
        self.size += size

    def take(self) -> tuple[Any, str | None]:
        """The next (item, task id). The queue must not be empty."""
        if self.urgent:
            return self.urgent.popleft(), None
        task_id = self.turns.popleft()
        queue = self.tasks[task_id]
        item, size = queue.popleft()
        self.size -= size
        if queue:
            self.turns.append(task_id)
        else:
            del self.tasks[task_id]
        return item, task_id


class Sink:
    """Where a runner puts what its tasks send to the master (the agent's `Sender`)."""

    def data(self, task_id: str, message: tuple[Any, ...], size: int, wait: bool = True) -> None:
        """A chunk of the task's output or attachments (`size` bytes), sent in the order put;
        waits while the sink is `full` (unless not `wait`: then the caller keeps to the
        limit itself, by reading no more while it is full)."""
        raise NotImplementedError

    def full(self) -> bool:
        """True while more queued chunks would go over the sink's limit."""
        raise NotImplementedError

    def finish(
        self, task_id: str, wire: tuple[Any, ...], contents: dict[int, bytes] | None = None
    ) -> None:
        """The task's outcome (``protocol.outcome``): sent after its chunks, the contents of
        its big attachments (`contents`, by index) and its ``path`` attachments. Never waits
        for room: it is called by threads that must not block (a reader of many tasks)."""
        raise NotImplementedError
