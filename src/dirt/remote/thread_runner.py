"""The agent's "thread" isolation: tasks run in threads of the agent's own process.

Stdlib only; shipped in the agent's source (see ``dirt.remote.source``). Fast, no isolation:
timeouts and kills only stop waiting for the thread (it is abandoned, not stopped). What a task
thread prints goes to its own `OutputBuffer` and on to the master while it runs, as in process
isolation.
"""

from __future__ import annotations

import heapq
import queue
import sys
import threading
import time
from types import CodeType
from typing import Any, TextIO

from dirt.remote.protocol import OUTPUT, RunRequest, outcome, unserialisable_type
from dirt.remote.streams import (
    DEFAULT_ATTACHMENT_LIMIT,
    DEFAULT_OUTPUT_LIMIT,
    FLUSH_AFTER,
    AttachmentError,
    OutputBuffer,
    Sink,
    prepare_attachments,
)
from dirt.remote.tasking import TaskCodes, run_task

STAGE = 64 * 1024  # a task thread's writes are gathered up to this many bytes


class TaskOutput:
    """One task thread's output on its way to the sink. Its lock also keeps the task's chunks
    and its outcome in order, whichever thread sends them."""

    __slots__ = ("buffer", "closed", "limit", "lock", "stage", "task_id")

    def __init__(self, task_id: str, limit: int) -> None:
        self.task_id = task_id
        self.limit = limit
        self.buffer: OutputBuffer | None = None  # made at the first write: most tasks print little
        self.stage = bytearray()
        self.lock = threading.Lock()
        self.closed = False

    def send(self, sink: Sink, final: bool = False) -> bytes:
        """Pass on what is due (all, when `final`: then returns the last piece). Lock held."""
        if self.stage:
            if self.buffer is None:
                self.buffer = OutputBuffer(self.limit)
            self.buffer.feed(bytes(self.stage), time.monotonic())
            self.stage.clear()
        if self.buffer is None:
            return b""
        last = b""
        if final:
            chunks, last = self.buffer.final()
        else:
            chunks = self.buffer.take(time.monotonic())
        for offset, data in chunks:
            sink.data(self.task_id, (OUTPUT, self.task_id, offset, data), len(data))
        return last


class ThreadOutput:
    """sys.stdout/stderr stand-in that keeps each task thread's writes apart."""

    def __init__(self, fallback: TextIO, local: threading.local, sink: Sink) -> None:
        self._fallback = fallback
        self._local = local
        self._sink = sink

    def write(self, text: str) -> int:
        out: TaskOutput | None = getattr(self._local, "out", None)
        if out is None:
            return self._fallback.write(text)
        data = text.encode("utf-8", "backslashreplace")
        with out.lock:
            if not out.closed:
                out.stage += data
                if len(out.stage) >= STAGE:
                    out.send(self._sink)
        return len(text)

    def flush(self) -> None:
        if getattr(self._local, "out", None) is None:
            self._fallback.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


class ThreadRunner:
    """Runs each task in a thread; a watchdog thread reports the ones past their timeout and
    sends the output that is due.

    Threads are kept for the next task (starting one costs more than the trivial task it would
    run); an abandoned thread rejoins the idle ones if its task ever ends.
    """

    def __init__(self, config: dict[str, Any], sink: Sink) -> None:
        self.sink = sink
        self.output_limit = int(config.get("output_limit", DEFAULT_OUTPUT_LIMIT))
        self.attachment_limit = int(config.get("attachment_limit", DEFAULT_ATTACHMENT_LIMIT))
        self.codes = TaskCodes("agent")
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        # task_id -> (start, timeout); a task leaves it when it is reported
        self.active: dict[str, tuple[float, float | None]] = {}
        self.outputs: dict[str, TaskOutput] = {}
        self.deadlines: list[tuple[float, str]] = []
        self.watchdog: threading.Thread | None = None
        self.watching = False  # the watchdog waits with a timeout (not until woken)
        self.jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.idle = 0  # threads waiting for a job (or about to)
        self.workers = 0
        self.stopping = False
        self.local = threading.local()
        if not isinstance(sys.stdout, ThreadOutput):
            sys.stdout = ThreadOutput(sys.stdout, self.local, sink)
            sys.stderr = ThreadOutput(sys.stderr, self.local, sink)
        else:
            self.local = sys.stdout._local
            for stream in (sys.stdout, sys.stderr):
                stream._sink = sink  # type: ignore[union-attr]

    def run(self, request: RunRequest) -> None:
        task_id, module_name, timeout = request.task_id, request.module_name, request.timeout
        code, error = self.codes.get(request.sha256, module_name, request.source, request.path)
        if code is None:
            self.sink.finish(task_id, outcome(error=error))
            return
        start = time.monotonic()
        out = TaskOutput(task_id, self.output_limit)
        with self.lock:
            self.active[task_id] = (start, timeout)
            self.outputs[task_id] = out
            if timeout is not None:
                heapq.heappush(self.deadlines, (start + timeout, task_id))
            self.ensure_watchdog()
            if timeout is not None or not self.watching:
                # A new deadline, or output to flush soon: one wake, not one per task.
                self.cond.notify()
            spawn = self.idle == 0
            if spawn:
                self.workers += 1
                name = f"dirt-task-{self.workers}"
            else:
                self.idle -= 1
        self.jobs.put((task_id, code, module_name, request.kwargs, start, out))
        if spawn:
            thread = threading.Thread(target=self.work, name=name)
            thread.daemon = True
            thread.start()

    def work(self) -> None:
        """A task thread: runs jobs until the runner stops."""
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self.task_thread(*job)
            with self.lock:
                if self.stopping:
                    return
                self.idle += 1

    def task_thread(
        self,
        task_id: str,
        code: CodeType,
        module_name: str,
        kwargs: dict[str, Any],
        start: float,
        out: TaskOutput,
    ) -> None:
        self.local.out = out
        big: dict[int, bytes] = {}
        try:
            results, error = run_task(code, module_name, kwargs)
            if error is None:
                try:
                    results, big = prepare_attachments(results, self.attachment_limit)
                except AttachmentError as exc:
                    results, error = None, str(exc)
            if error is None:
                # Refuse what process isolation would refuse too, so both modes agree.
                bad = unserialisable_type(results)
                if bad is not None:
                    results, error, big = None, f"results not serialisable: {bad}", {}
        finally:
            self.local.out = None
        self.finish(
            task_id,
            outcome(results=results, error=error, duration=time.monotonic() - start),
            big,
        )

    def finish(
        self, task_id: str, wire: tuple[Any, ...], contents: dict[int, bytes] | None = None
    ) -> None:
        """Report a task once: whichever of completion, timeout or kill comes first wins."""
        with self.lock:
            if self.active.pop(task_id, None) is None:
                return
            out = self.outputs.pop(task_id, None)
        if out is None:
            self.sink.finish(task_id, wire, contents)
            return
        with out.lock:
            out.closed = True
            last = out.send(self.sink, final=True)
            self.sink.finish(task_id, (*wire[:-1], last), contents)

    def ensure_watchdog(self) -> None:
        if self.watchdog is None:
            self.watchdog = threading.Thread(target=self.watch, name="dirt-watchdog")
            self.watchdog.daemon = True
            self.watchdog.start()

    def watch(self) -> None:
        """Report tasks past their deadline; while tasks run, send their due output."""
        while True:
            expired: list[tuple[str, float, float | None]] = []
            with self.lock:
                if self.stopping:
                    return
                now = time.monotonic()
                while self.deadlines and self.deadlines[0][1] not in self.active:
                    heapq.heappop(self.deadlines)
                while self.deadlines and self.deadlines[0][0] <= now:
                    _, task_id = heapq.heappop(self.deadlines)
                    if task_id in self.active:
                        expired.append((task_id, *self.active[task_id]))
                outputs = list(self.outputs.values())
                if not expired:
                    wait = FLUSH_AFTER / 2 if self.active else None
                    if self.deadlines:
                        until = self.deadlines[0][0] - now
                        wait = until if wait is None else min(wait, until)
                    self.watching = wait is not None
                    self.cond.wait(wait)
            for task_id, start, timeout in expired:
                self.finish(
                    task_id,
                    outcome(
                        error=f"task timed out after {timeout:g}s; its thread was abandoned",
                        timed_out=True,
                        duration=now - start,
                    ),
                )
            for out in outputs:
                with out.lock:
                    if not out.closed:
                        out.send(self.sink)

    def kill(self, task_id: str) -> None:
        with self.lock:
            entry = self.active.get(task_id)
        if entry is not None:
            self.finish(
                task_id,
                outcome(
                    error="task was killed on request; its thread was abandoned",
                    killed=True,
                    duration=time.monotonic() - entry[0],
                ),
            )

    def running(self) -> int:
        with self.lock:
            return len(self.active)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.active.clear()
            self.outputs.clear()
            self.cond.notify_all()
            idle = self.idle
        for _ in range(idle):
            self.jobs.put(None)
