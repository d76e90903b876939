"""Node agent: runs every task the master sends over one execnet channel.

Shipped as source text with ``gateway.remote_exec``; stdlib only. ``dirt.remote.source()``
ships it after protocol.py, tasking.py, streams.py, task_pipes.py, process_runner.py and
thread_runner.py and drops the imports between them. The master keeps one gateway per node and
one agent channel on it, multiplexed for all tasks; the messages are in ``protocol.py``. Tasks
run in children of a warm fork server ("process" isolation, process_runner.py) or in threads of
this process ("thread" isolation, thread_runner.py).

Everything the agent sends goes through one `Sender`: a fair queue (see ``streams.FairQueue``)
emptied by one thread, so a task's big output or attachment takes turns with the other tasks'
messages, one chunk at a time. A task's attachments are read by an uploader thread of its own,
so a file that reads slowly holds up only its task. When the master reads slowly, the sending
waits, the queue fills, and whoever puts chunks in (the fork server's reader, a task thread, an
uploader) waits too: the agent's memory stays bounded.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from typing import Any

from dirt.remote.process_runner import ProcessRunner
from dirt.remote.protocol import (
    BLOB,
    CHUNK_SIZE,
    DONE,
    FATAL,
    KILL,
    LOAD,
    READY,
    RUN,
    STOP,
    python_too_old,
    run_request,
    unserialisable_type,
    without_results,
)
from dirt.remote.streams import (
    DEFAULT_ATTACHMENT_LIMIT,
    FairQueue,
    Sink,
    human_size,
)
from dirt.remote.thread_runner import ThreadRunner

# Bytes of chunks queued for the master before whoever puts more waits.
HIGH = 8 * CHUNK_SIZE


class Upload:
    """One attachment's chunks, read by its task's uploader thread: a file read to its end
    (``path``: files in /proc and pipes say they are empty, so the size the file had is not
    trusted; at most `limit` bytes are read), or big contents held in memory (thread
    isolation)."""

    def __init__(
        self,
        task_id: str,
        index: int,
        item: dict[str, Any],
        data: bytes | None = None,
        limit: int = DEFAULT_ATTACHMENT_LIMIT,
    ) -> None:
        self.task_id = task_id
        self.index = index
        self.name = item.get("filename")
        self.path: str | None = item.get("path") if data is None else None
        self.data = memoryview(data) if data is not None else None
        self.limit = limit
        self.sent = 0
        self.file: Any = None
        self.error: str | None = None

    def next(self) -> tuple[Any, ...] | None:
        """The next BLOB message, or None at the end (or on an error, kept in `error`)."""
        if self.data is not None:
            chunk = bytes(self.data[self.sent : self.sent + CHUNK_SIZE])
        else:
            try:
                if self.file is None:
                    self.file = open(self.path, "rb")  # type: ignore[arg-type]  # noqa: SIM115
                chunk = self.file.read(CHUNK_SIZE)
            except OSError as exc:
                self.error = (
                    f"attachment {self.name}: cannot read {self.path}: {exc.strerror or exc}"
                )
                chunk = b""
            if self.sent + len(chunk) > self.limit:
                self.error = (
                    f"attachment {self.name}: {self.path} grew over the limit of "
                    f"{human_size(self.limit)} ([dispatch] attachment_limit)"
                )
                chunk = b""
        if not chunk:
            self.close()
            return None
        self.sent += len(chunk)
        return (BLOB, self.task_id, self.index, chunk)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def done_after_uploads(
    task_id: str, wire: tuple[Any, ...], uploads: list[Upload]
) -> tuple[Any, ...]:
    """A task's DONE once its uploads were sent: each uploaded attachment names its chunks
    (``"stream": index``); an upload's error fails the task."""
    for upload in uploads:
        if upload.error is not None:
            return (DONE, task_id, without_results(wire, upload.error))
    results = dict(wire[0])
    items = list(results["attachments"])
    for upload in uploads:
        item = {k: v for k, v in items[upload.index].items() if k not in ("path", "size")}
        item["stream"] = upload.index
        item.setdefault("text", False)
        items[upload.index] = item
    results["attachments"] = items
    return (DONE, task_id, (results, *wire[1:]))


def uploads_of(
    task_id: str, results: Any, contents: dict[int, bytes] | None, limit: int
) -> list[Upload]:
    """The attachments of `results` the agent sends in chunks: ``path`` ones and big contents
    (see ``streams.prepare_attachments``)."""
    items = results.get("attachments") if isinstance(results, dict) else None
    if not isinstance(items, list):
        return []
    uploads = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        if "path" in item and "contents" not in item:
            uploads.append(Upload(task_id, index, item, limit=limit))
        elif contents and index in contents:
            uploads.append(Upload(task_id, index, item, contents[index]))
    return uploads


class Sender(Sink):
    """Sends everything on the agent channel, fairly (see the module's docstring).

    A message put when nothing is queued and nothing is being sent goes out at once, in the
    putting thread (one thread hop fewer per quick task); the rest waits its turn for the
    sending thread. Messages put by execnet's receiver thread never wait: that thread must
    never block.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.cond = threading.Condition()
        self.queue = FairQueue()
        self.busy = False  # a thread is sending (or reading a file for the next chunk)
        self.closed = False
        self.closing = False
        self.uploading = 0  # uploader threads at work (see `_upload`)
        self.attachment_limit = DEFAULT_ATTACHMENT_LIMIT  # from the master's config
        self.thread = threading.Thread(target=self._run, name="dirt-sender", daemon=True)
        self.thread.start()

    def send(self, message: tuple[Any, ...]) -> None:
        """A message of no task (READY, LOAD, FATAL): before every task's. Never waits."""
        with self.cond:
            if not self.closed:
                self.queue.put(message)
                self.cond.notify_all()

    def data(self, task_id: str, message: tuple[Any, ...], size: int, wait: bool = True) -> None:
        with self.cond:
            while wait and self.queue.size > HIGH and not self.closed:
                self.cond.wait()
            if not self.closed:
                self.queue.put(message, task_id, size)
                self.cond.notify_all()

    def full(self) -> bool:
        return self.queue.size > HIGH

    def finish(
        self, task_id: str, wire: tuple[Any, ...], contents: dict[int, bytes] | None = None
    ) -> None:
        uploads = (
            uploads_of(task_id, wire[0], contents, self.attachment_limit) if wire[1] is None else []
        )
        if not uploads:
            self._done((DONE, task_id, wire))
            return
        with self.cond:
            if self.closed:
                return
            self.uploading += 1
        thread = threading.Thread(
            target=self._upload, args=(task_id, wire, uploads), name=f"dirt-upload-{task_id}"
        )
        thread.daemon = True
        thread.start()

    def _upload(self, task_id: str, wire: tuple[Any, ...], uploads: list[Upload]) -> None:
        """A task's uploader thread: its attachments chunk by chunk, then its DONE. It puts a
        chunk only when the queue has room, so a file is read as fast as the link takes it;
        and a file that reads slowly (a pipe, a network file system) holds up this task alone."""
        try:
            for upload in uploads:
                while not self.closed:
                    message = upload.next()
                    if message is None:
                        break
                    self.data(task_id, message, len(message[3]))
                if upload.error is not None:
                    break
            message = done_after_uploads(task_id, wire, uploads)
        except Exception:
            traceback.print_exc()  # a bug here must not leave the task unreported
            message = (DONE, task_id, without_results(wire, "attachments not sent: agent error"))
        finally:
            for upload in uploads:
                upload.close()
            with self.cond:
                self.uploading -= 1
                self.cond.notify_all()
        self._done(message)

    def _done(self, message: tuple[Any, ...]) -> None:
        """Send a DONE after the task's queued chunks: at once in this thread when nothing is
        queued or being sent."""
        with self.cond:
            if self.closed:
                return
            if self.busy or self.queue:
                self.queue.put(message, message[1])
                self.cond.notify_all()
                return
            self.busy = True
        try:
            self._send(message)
        finally:
            with self.cond:
                self.busy = False
                # Wake the sending thread only when it has work (or a close waits): a thread
                # switch per quick task is what the fast path saves.
                if self.queue or self.closing:
                    self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and (self.busy or not self.queue):
                    self.cond.wait()
                if self.closed:
                    return
                item, _ = self.queue.take()
                self.busy = True
                self.cond.notify_all()  # room for those waiting to put
            try:
                self._send(item)
            except Exception:
                # A bug here must not stop every later message; say so where it is kept.
                traceback.print_exc()
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.channel.send(message)
        except Exception as exc:
            if self.channel.isclosed():
                self._close()
                return
            if message[0] != DONE:
                raise
            # Most likely execnet could not serialise the results; the task still finished.
            wire = message[2]
            name = unserialisable_type(wire[0]) or type(exc).__name__
            try:
                self.channel.send(
                    (DONE, message[1], without_results(wire, f"results not serialisable: {name}"))
                )
            except Exception:
                if self.channel.isclosed():
                    self._close()

    def _close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued and being uploaded (for at most `timeout` seconds), then stop."""
        with self.cond:
            self.closing = True
            self.cond.wait_for(
                lambda: self.closed or not (self.queue or self.busy or self.uploading), timeout
            )
            self.closed = True
            self.cond.notify_all()


def start_runner(config: dict[str, Any], sender: Sender) -> ProcessRunner | ThreadRunner:
    """The runner the master's config asks for; raises (with a reason) when it cannot start."""
    too_old = python_too_old(sys.executable, sys.version_info[:2])
    if too_old is not None:
        raise RuntimeError(too_old)
    isolation = config.get("isolation", "process")
    if isolation == "process":
        return ProcessRunner(config, sender)
    if isolation == "thread":
        return ThreadRunner(config, sender)
    raise ValueError(f"unknown isolation {isolation!r} (use 'process' or 'thread')")


def serve(channel: Any) -> None:
    sender = Sender(channel)
    try:
        config = channel.receive()
        sender.attachment_limit = int(config.get("attachment_limit", DEFAULT_ATTACHMENT_LIMIT))
        runner = start_runner(config, sender)
    except Exception as exc:
        sender.send((FATAL, f"agent could not start: {exc}"))
        sender.close()
        return
    isolation = "process" if isinstance(runner, ProcessRunner) else "thread"
    finished = threading.Event()
    failures: list[str] = []
    closed = object()

    def on_message(message: Any) -> None:
        # Runs in execnet's receiver thread: one hand-off fewer per task than a receive loop.
        if finished.is_set():
            return
        if message is closed:
            # The master closed the channel or went away: stop like on STOP.
            finished.set()
            return
        try:
            kind = message[0]
            if kind == RUN:
                runner.run(run_request(message))
            elif kind == KILL:
                runner.kill(message[1])
            elif kind == LOAD:
                sender.send((LOAD, list(os.getloadavg()), runner.running()))
            elif kind == STOP:
                finished.set()
        except Exception:
            failures.append(traceback.format_exc())
            finished.set()

    sender.send((READY, {"pid": os.getpid(), "isolation": isolation, "python": sys.executable}))
    channel.setcallback(on_message, endmarker=closed)
    finished.wait()
    runner.stop()
    if failures:
        sender.send((FATAL, "agent failed:\n" + failures[0]))
    sender.close()


if __name__ == "__channelexec__":
    serve(channel)  # type: ignore[name-defined]  # noqa: F821
