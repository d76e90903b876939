"""The agent's "thread" isolation: tasks run in threads of the agent's own process.

Stdlib only; shipped in the agent's source (see ``dirt.remote.source``). Fast, no isolation:
timeouts and kills only stop waiting for the thread (it is abandoned, not stopped).
"""

from __future__ import annotations

import heapq
import queue
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType
from typing import Any, TextIO

from dirt.remote.protocol import OUTPUT_TAIL, RunRequest, outcome, unserialisable_type
from dirt.remote.tasking import TaskCodes, run_task


class ThreadOutput:
    """sys.stdout/stderr stand-in that keeps each task thread's writes apart."""

    def __init__(self, fallback: TextIO, local: threading.local) -> None:
        self._fallback = fallback
        self._local = local

    def write(self, text: str) -> int:
        buf: list[str] | None = getattr(self._local, "buf", None)
        if buf is None:
            return self._fallback.write(text)
        buf.append(text)
        self._local.size += len(text)
        if self._local.size > 4 * OUTPUT_TAIL:
            joined = "".join(buf)[-OUTPUT_TAIL:]
            buf[:] = [joined]
            self._local.size = len(joined)
        return len(text)

    def flush(self) -> None:
        if getattr(self._local, "buf", None) is None:
            self._fallback.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


class ThreadRunner:
    """Runs each task in a thread; a watchdog thread reports the ones past their timeout.

    Threads are kept for the next task (starting one costs more than the trivial task it would
    run); an abandoned thread rejoins the idle ones if its task ever ends.
    """

    def __init__(self, report: Callable[[str, tuple[Any, ...]], None]) -> None:
        self.report = report
        self.codes = TaskCodes("agent")
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        # task_id -> (start, timeout); a task leaves it when it is reported
        self.active: dict[str, tuple[float, float | None]] = {}
        self.deadlines: list[tuple[float, str]] = []
        self.watchdog: threading.Thread | None = None
        self.jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.idle = 0  # threads waiting for a job (or about to)
        self.workers = 0
        self.stopping = False
        self.local = threading.local()
        if not isinstance(sys.stdout, ThreadOutput):
            sys.stdout = ThreadOutput(sys.stdout, self.local)
            sys.stderr = ThreadOutput(sys.stderr, self.local)
        else:
            self.local = sys.stdout._local

    def run(self, request: RunRequest) -> None:
        task_id, module_name, timeout = request.task_id, request.module_name, request.timeout
        code, error = self.codes.get(request.sha256, module_name, request.source)
        if code is None:
            self.report(task_id, outcome(error=error))
            return
        start = time.monotonic()
        with self.lock:
            self.active[task_id] = (start, timeout)
            if timeout is not None:
                heapq.heappush(self.deadlines, (start + timeout, task_id))
                self.ensure_watchdog()
                self.cond.notify()
            spawn = self.idle == 0
            if spawn:
                self.workers += 1
                name = f"dirt-task-{self.workers}"
            else:
                self.idle -= 1
        self.jobs.put((task_id, code, module_name, request.kwargs, start))
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
        self, task_id: str, code: CodeType, module_name: str, kwargs: dict[str, Any], start: float
    ) -> None:
        self.local.buf = []
        self.local.size = 0
        try:
            results, error = run_task(code, module_name, kwargs)
            if error is None:
                # Refuse what process isolation would refuse too, so both modes agree.
                bad = unserialisable_type(results)
                if bad is not None:
                    results, error = None, f"results not serialisable: {bad}"
        finally:
            output = "".join(self.local.buf)[-OUTPUT_TAIL:]
            self.local.buf = None
        self.finish(
            task_id,
            outcome(results=results, error=error, duration=time.monotonic() - start, output=output),
        )

    def finish(self, task_id: str, wire: tuple[Any, ...]) -> None:
        """Report a task once: whichever of completion, timeout or kill comes first wins."""
        with self.lock:
            if self.active.pop(task_id, None) is None:
                return
        self.report(task_id, wire)

    def ensure_watchdog(self) -> None:
        if self.watchdog is None:
            self.watchdog = threading.Thread(target=self.watch, name="dirt-watchdog")
            self.watchdog.daemon = True
            self.watchdog.start()

    def watch(self) -> None:
        while True:
            with self.lock:
                while not self.stopping:
                    now = time.monotonic()
                    while self.deadlines and self.deadlines[0][1] not in self.active:
                        heapq.heappop(self.deadlines)
                    if self.deadlines and self.deadlines[0][0] <= now:
                        break
                    wait = self.deadlines[0][0] - now if self.deadlines else None
                    self.cond.wait(wait)
                if self.stopping:
                    return
                _, task_id = heapq.heappop(self.deadlines)
                start, timeout = self.active[task_id]
            self.finish(
                task_id,
                outcome(
                    error=f"task timed out after {timeout:g}s; its thread was abandoned",
                    timed_out=True,
                    duration=time.monotonic() - start,
                ),
            )

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
            self.cond.notify_all()
            idle = self.idle
        for _ in range(idle):
            self.jobs.put(None)
