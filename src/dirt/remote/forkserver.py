"""Warm fork server: runs each task module in its own forked process on a node.

Shipped as source text: the agent starts ``python -c BOOTSTRAP`` and sends this source as the
first frame on its stdin; stdlib only. ``dirt.remote.source()`` ships it after protocol.py,
tasking.py and streams.py and drops the imports between them; the messages are in
``protocol.py``. It is single-threaded on purpose (selectors plus a SIGCHLD wakeup pipe) so that
``os.fork()`` is safe: a forked child of a threaded process can inherit a held lock.

Each task's process writes its stdout and stderr to one pipe and its results to another; the
server reads both as they come (nothing touches the disk), keeps the output within the limit
(``streams.OutputBuffer``) and passes everything on to the agent through one fair queue, so a
task that prints or attaches a lot holds back the others by at most one chunk. When the agent
reads slowly the queue fills, the server stops reading the pipes, and the task's writes wait:
memory stays bounded, and no data is dropped except output over the limit.

The server imports as little as it can: every fork copies the page tables of what it has loaded,
and every child's exit tears them down again, so a module imported here costs every task
(measured: two dozen common stdlib modules preloaded made each trivial task cost about 1 ms more
CPU). A task imports what it needs in its own process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import marshal
import os
import selectors
import signal
import sys
import time
from types import CodeType
from typing import Any

from dirt.remote.protocol import (
    BLOB,
    CHUNK_SIZE,
    CONFIG,
    DONE,
    ERROR,
    KILL,
    OUTPUT,
    READ_SIZE,
    READY,
    RESULT,
    RUN,
    STARTED,
    STOP,
    FrameDecoder,
    RunRequest,
    encode,
    frame,
    outcome,
    run_request,
    signal_name,
    unserialisable_type,
)
from dirt.remote.streams import (
    DEFAULT_ATTACHMENT_LIMIT,
    DEFAULT_OUTPUT_LIMIT,
    AttachmentError,
    FairQueue,
    OutputBuffer,
    prepare_attachments,
)
from dirt.remote.tasking import TaskCodes, kill_group, run_task

# Flow control towards the agent: over HIGH bytes queued, the task pipes are not read (their
# writers wait) until the queue is below LOW again.
HIGH = 4 * CHUNK_SIZE
LOW = CHUNK_SIZE
# A task running this long is named to the agent with its pid (STARTED), so the agent can kill
# its process group should this server die; quicker tasks need no message of their own.
STARTED_AFTER = 0.05
PIPE_SIZE = 1 << 20  # asked of each task pipe (Linux): fewer, bigger reads
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (named in fcntl from Python 3.10)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def child_main(
    server: ForkServer, code: CodeType, request: RunRequest, out_w: int, res_w: int
) -> None:
    """Body of a forked child; the caller exits the process straight after."""
    os.setsid()
    # Undo the fork server's signal plumbing: the task may run subprocesses of its own and
    # expects ordinary SIGCHLD and SIGINT behaviour.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd in server.private_fds():
        with contextlib.suppress(OSError):
            os.close(fd)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.close(out_w)
    results, error = run_task(code, request.module_name, request.kwargs)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    send_results(res_w, results, error, server.attachment_limit)


def send_results(fd: int, results: Any, error: str | None, limit: int) -> None:
    """Big attachment contents in chunks, then the results (see protocol.py)."""
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


class Child:
    """One task's forked process, from its fork until its pipes are read out and it is reaped."""

    __slots__ = (
        "deadline",
        "decoder",
        "error",
        "exit_status",
        "got_results",
        "killed",
        "named",
        "out_fd",
        "output",
        "paused",
        "pid",
        "res_fd",
        "results",
        "start",
        "task_id",
        "timed_out",
        "timeout",
    )

    def __init__(self, task_id: str, timeout: float | None, output_limit: int) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.timed_out = False
        self.killed = False
        self.named = False  # its pid was sent in a STARTED
        self.start = time.monotonic()
        self.deadline = None if timeout is None else self.start + timeout
        self.pid = 0
        self.out_fd = -1
        self.res_fd = -1
        self.paused = False
        self.output = OutputBuffer(output_limit)
        self.decoder = FrameDecoder()
        self.results: Any = None
        self.error: str | None = None
        self.got_results = False
        self.exit_status: int | None = None


class ForkServer:
    def __init__(self) -> None:
        # Keep the protocol on private fds and point 0/1 elsewhere, so a stray print here
        # cannot corrupt the protocol and children do not inherit it.
        self.proto_in = os.dup(0)
        self.proto_out = os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        os.set_blocking(self.proto_out, False)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proto_in, selectors.EVENT_READ, "proto")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.writing = False  # proto_out registered for EVENT_WRITE
        self.codes = TaskCodes("fork server")
        self.by_pid: dict[int, Child] = {}
        self.by_task: dict[str, Child] = {}
        self.decoder = FrameDecoder()
        self.queue = FairQueue()
        self.unsent = memoryview(b"")  # the rest of the frame being written
        self.throttled = False
        self.output_limit = DEFAULT_OUTPUT_LIMIT
        self.attachment_limit = DEFAULT_ATTACHMENT_LIMIT
        self.stopping = False
        self.agent_gone = False

    def private_fds(self) -> list[int]:
        fds = [self.proto_in, self.proto_out, self.wake_r, self.wake_w, self.selector.fileno()]
        for child in self.by_pid.values():
            fds += [fd for fd in (child.out_fd, child.res_fd) if fd >= 0]
        return fds

    # to the agent ----------------------------------------------------------------------------

    def send(self, message: tuple[Any, ...], task_id: str | None = None, size: int = 0) -> None:
        """Queue a message for the agent: a task's in order, tasks in turn (see FairQueue)."""
        if not self.agent_gone:
            self.queue.put(encode(message), task_id, size)

    def pump(self) -> None:
        """Write queued frames until done or the pipe is full (then wait to be writable)."""
        try:
            while True:
                if not self.unsent:
                    if not self.queue:
                        break
                    self.unsent = memoryview(self.queue.take()[0])
                self.unsent = self.unsent[os.write(self.proto_out, self.unsent) :]
        except BlockingIOError:
            pass
        except OSError:
            # The agent is gone (its gateway was killed): nobody is left to report to, so
            # wind down, killing what still runs.
            self.agent_gone = True
            self.stopping = True
            self.queue = FairQueue()
            self.unsent = memoryview(b"")
        want = bool(self.unsent) or bool(self.queue)
        if want != self.writing and not self.agent_gone:
            self.writing = want
            if want:
                self.selector.register(self.proto_out, selectors.EVENT_WRITE, "out")
            else:
                self.selector.unregister(self.proto_out)
        self.throttle()

    def throttle(self) -> None:
        """Stop reading the task pipes while the queue to the agent is full; resume below LOW.

        Output beyond a task's head is read on regardless: it is kept in a bounded tail, not
        queued, so a task printing without end is never slowed.
        """
        size = self.queue.size
        if not self.throttled and size > HIGH:
            self.throttled = True
            for child in self.by_pid.values():
                self._pause(child, True)
        elif self.throttled and size < LOW:
            self.throttled = False
            for child in self.by_pid.values():
                self._pause(child, False)

    def _pause(self, child: Child, pause: bool) -> None:
        if child.paused == pause:
            return
        child.paused = pause
        for fd, kind in ((child.out_fd, "out"), (child.res_fd, "res")):
            if fd < 0 or (kind == "out" and child.output.total > child.output.head):
                continue
            if pause:
                self.selector.unregister(fd)
            else:
                self.selector.register(fd, selectors.EVENT_READ, (child, kind))

    # requests ---------------------------------------------------------------------------

    def handle(self, message: Any) -> None:
        kind = message[0]
        if kind == RUN:
            self.start_task(run_request(message))
        elif kind == KILL:
            child = self.by_task.get(message[1])
            if child is not None and not child.killed and child.exit_status is None:
                child.killed = True
                kill_group(child.pid)
        elif kind == CONFIG:
            config = message[1]
            self.output_limit = int(config.get("output_limit", self.output_limit))
            self.attachment_limit = int(config.get("attachment_limit", self.attachment_limit))
        elif kind == STOP:
            self.stopping = True
        else:
            self.send((ERROR, f"unknown request {kind!r}"))

    def start_task(self, request: RunRequest) -> None:
        task_id = request.task_id
        code, error = self.codes.get(
            request.sha256, request.module_name, request.source, request.path
        )
        if code is None:
            self.send((DONE, task_id, outcome(error=error)), task_id)
            return
        child = Child(task_id, request.timeout, self.output_limit)
        out_r, out_w = os.pipe()
        res_r, res_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(out_r, F_SETPIPE_SZ, PIPE_SIZE)
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                os.close(out_r)
                os.close(res_r)
                child_main(self, code, request, out_w, res_w)
                status = 0
            finally:
                # Never fall back into the fork server's loop, whatever happened.
                os._exit(status)
        os.close(out_w)
        os.close(res_w)
        os.set_blocking(out_r, False)
        os.set_blocking(res_r, False)
        child.pid = pid
        child.out_fd = out_r
        child.res_fd = res_r
        self.by_pid[pid] = child
        self.by_task[task_id] = child
        self.selector.register(out_r, selectors.EVENT_READ, (child, "out"))
        self.selector.register(res_r, selectors.EVENT_READ, (child, "res"))
        if self.throttled:
            self._pause(child, True)

    # children ---------------------------------------------------------------------------

    def read_child(self, child: Child, kind: str, drain: bool = False) -> None:
        """Read what a task's pipe holds (all of it, when `drain`); close it at its end."""
        fd = child.out_fd if kind == "out" else child.res_fd
        while fd >= 0:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                self._close(child, kind)
                return
            if kind == "out":
                child.output.feed(data, time.monotonic())
                self.send_output(child)
            else:
                for message in child.decoder.feed(data):
                    self.from_child(child, message)
            if not drain:
                return

    def _close(self, child: Child, kind: str) -> None:
        fd = child.out_fd if kind == "out" else child.res_fd
        if fd < 0:
            return
        with contextlib.suppress(KeyError):  # not registered while paused
            self.selector.unregister(fd)
        os.close(fd)
        if kind == "out":
            child.out_fd = -1
        else:
            child.res_fd = -1

    def from_child(self, child: Child, message: Any) -> None:
        if message[0] == BLOB:
            data = message[2]
            self.send((BLOB, child.task_id, message[1], data), child.task_id, len(data))
        elif message[0] == RESULT:
            child.results, child.error = message[1], message[2]
            child.got_results = True

    def send_output(self, child: Child, final: bool = False) -> bytes:
        """Queue the task's output that is due (all of it, when `final`); returns the last
        piece when `final` (it rides in the DONE message)."""
        last = b""
        if final:
            chunks, last = child.output.final()
        else:
            chunks = child.output.take(time.monotonic())
        for offset, data in chunks:
            self.send((OUTPUT, child.task_id, offset, data), child.task_id, len(data))
        return last

    def reap(self) -> None:
        while self.by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.by_pid.pop(pid, None)
            if child is None:
                continue
            del self.by_task[child.task_id]
            # Whatever the task left behind in its process group goes with it.
            kill_group(pid)
            child.exit_status = status
            # What it wrote before it ended is in its pipes; a leftover process that escaped
            # the group may hold them open, so read what is there and stop.
            self.read_child(child, "res", drain=True)
            self.read_child(child, "out", drain=True)
            self._close(child, "res")
            self._close(child, "out")
            last = self.send_output(child, final=True)
            self.send((DONE, child.task_id, self.outcome_of(child, status, last)), child.task_id)

    def outcome_of(self, child: Child, status: int, output: bytes) -> tuple[Any, ...]:
        duration = time.monotonic() - child.start
        exit_code: int | None = os.waitstatus_to_exitcode(status)
        sig = None
        if exit_code is not None and exit_code < 0:
            sig, exit_code = -exit_code, None
        results, error = child.results, child.error
        if child.decoder.pending and error is None and not child.got_results:
            error = "task result unreadable: the task process ended in the middle of it"
        if child.timed_out:
            error = f"task timed out after {child.timeout:g}s and was killed"
            results = None
        elif child.killed:
            error = "task was killed on request"
            results = None
        elif not child.got_results and error is None:
            if sig is not None:
                error = f"task process died from signal {sig} ({signal_name(sig)}) without results"
            else:
                error = f"task process exited with code {exit_code} without results"
        return outcome(
            results=results,
            error=error,
            exit_code=exit_code,
            signal=sig,
            timed_out=child.timed_out,
            killed=child.killed,
            duration=duration,
            output=output,
        )

    # timers -----------------------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Kill tasks past their deadline, send output that is due, name tasks running for a
        while; returns the seconds until the next of these is due (None: nothing is)."""
        wake: list[float] = []
        named = []
        for child in self.by_task.values():
            deadline = child.deadline
            if deadline is not None and not child.timed_out:
                if now >= deadline:
                    child.timed_out = True
                    kill_group(child.pid)
                else:
                    wake.append(deadline)
            if not child.named:
                if now - child.start >= STARTED_AFTER:
                    child.named = True
                    named.append((child.task_id, child.pid))
                else:
                    wake.append(child.start + STARTED_AFTER)
            due = child.output.due_at()
            if due is not None:
                if due <= now:
                    self.send_output(child)
                    due = child.output.due_at()
                if due is not None:
                    wake.append(due)
        if named:
            self.send((STARTED, named))
        return max(0.0, min(wake) - now) if wake else None

    # main loop --------------------------------------------------------------------------

    def read_requests(self) -> None:
        try:
            chunk = os.read(self.proto_in, READ_SIZE)
        except InterruptedError:
            return
        if not chunk:
            # The agent is gone; nobody is left to report to.
            self.stopping = True
            return
        for message in self.decoder.feed(chunk):
            self.handle(message)

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        # A Python-level handler is needed for the wakeup fd to be written; the real work
        # happens in the loop.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Objects made by the imports above are never freed; freezing them keeps the
        # children's garbage collector from touching (and copying) those pages.
        gc.collect()
        gc.freeze()
        self.send((READY, os.getpid()))
        self.pump()
        try:
            self.loop()
        finally:
            self.shutdown()

    def loop(self) -> None:
        while not self.stopping:
            wait = self.tick(time.monotonic())
            try:
                events = self.selector.select(wait)
            except InterruptedError:
                events = []
            for key, _ in events:
                data = key.data
                if data == "wake":
                    drain(self.wake_r)
                elif data == "proto":
                    self.read_requests()
                elif data != "out":
                    self.read_child(*data)
            # Reaping on every pass also covers a SIGCHLD that arrived before a select.
            if self.by_pid:
                self.reap()
            self.pump()

    def shutdown(self) -> None:
        for child in list(self.by_task.values()):
            child.killed = True
            kill_group(child.pid)
        deadline = time.monotonic() + 5
        while self.by_pid and time.monotonic() < deadline:
            self.reap()
            if self.by_pid:
                time.sleep(0.01)
        # What the agent can still take (it stopped us, or it is gone and this fails at once).
        os.set_blocking(self.proto_out, True)
        with contextlib.suppress(OSError):
            self.pump_all()

    def pump_all(self) -> None:
        while self.unsent or self.queue:
            if not self.unsent:
                self.unsent = memoryview(self.queue.take()[0])
            self.unsent = self.unsent[os.write(self.proto_out, self.unsent) :]


def drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 4096):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return
            raise


if __name__ == "__main__":
    ForkServer().serve()
