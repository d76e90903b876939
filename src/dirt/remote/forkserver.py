"""Warm fork server: forks one process per task on a node, and reaps it.

Shipped as source text; the agent compiles it, starts ``python -c BOOTSTRAP FD`` and sends the
code as the one frame on its stdin (``protocol.compiled``); stdlib only. ``dirt.remote.source()``
ships it after protocol.py, tasking.py and streams.py and drops the imports between them; the
messages are in ``protocol.py``. It is single-threaded on purpose (poll plus a SIGCHLD
wakeup pipe) so that ``os.fork()`` is safe: a forked child of a threaded process can inherit a
held lock.

It does as little as it can, because a fork is paid by the process that forks: the kernel
copies its page tables, and every page it writes afterwards traps once (copy on write). So the
server loads few modules, and its loop is short: it receives a RUN with the two pipes the agent
made for the task (their write ends, passed over the control socket), forks, and when the child
ends, reaps it and says so in one small EXITED message. The task's output and results go through
those pipes straight to the agent, which reads, limits and forwards them; nothing passes through
here. Timeouts and kills are done here, where the children are.
"""

from __future__ import annotations

import _socket
import _thread
import errno
import gc
import os
import select
import struct
import sys
import time
from collections import deque

from dirt.remote.protocol import (
    CONFIG,
    EXITED,
    FAILED,
    KILL,
    READY,
    RUN,
    STARTED,
    STOP,
    TYPE_CHECKING,
    FrameDecoder,
    RunRequest,
    encode,
    run_request,
)
from dirt.remote.streams import DEFAULT_ATTACHMENT_LIMIT, send_results
from dirt.remote.tasking import TaskCodes, kill_group, run_task

if TYPE_CHECKING:
    import signal
    from types import CodeType
    from typing import Any
else:
    import _signal as signal  # the same functions, without signal.py's enums

# A task running this long is named to the agent with its pid (STARTED), so the agent can kill
# its process group should this server die; quicker tasks need no message of their own.
STARTED_AFTER = 0.05
FDS_PER_RUN = 2  # the write ends of the task's output pipe and result pipe
# A task's sys.stdout holds this much before it writes to its pipe (Python's own default for a
# pipe, 4 KiB, makes printing a gigabyte cost 2-3 times what it costs into /dev/null: a pipe
# write per 4 KiB); and what it holds is flushed at least this often (a task that never
# flushes still shows its output while it runs).
STDOUT_BUFFER = 1 << 20
FLUSH_EVERY = 0.5
ANCILLARY = _socket.CMSG_SPACE(64 * 4)  # room for the fds of many RUNs in one read
# Bytes asked of one read of requests: a buffer this size is allocated per read, and one of
# protocol.READ_SIZE (1 MiB) is an mmap and a munmap each time.
REQUEST_READ = 1 << 16


def child_main(server: ForkServer, code: CodeType, request: RunRequest, out: int, res: int) -> None:
    """Body of a forked child; the caller exits the process straight after."""
    os.setsid()
    # Undo the fork server's signal plumbing: the task may run subprocesses of its own and
    # expects ordinary SIGCHLD and SIGINT behaviour.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd in server.private_fds():
        try:  # noqa: SIM105  (contextlib is one more module to load here)
            os.close(fd)
        except OSError:
            pass
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    sys.stdout = LazyStdout(sys.stdout)
    results, error = run_task(code, request.module_name, request.kwargs)
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105
            stream.flush()
        except Exception:
            pass
    send_results(res, results, error, server.attachment_limit)


KEPT: list[Any] = []


class LazyStdout:
    """The task's sys.stdout until it first writes to it: then its buffered stream (and the
    thread that flushes it) are made, and take its place. Most tasks print little or nothing,
    and a fork pays for every page its child touches: a 1 MiB buffer and a thread are most of
    what a trivial task's process would cost beyond the fork."""

    def __init__(self, inherited: Any) -> None:
        self._encoding = getattr(inherited, "encoding", None) or "utf-8"
        self._errors = getattr(inherited, "errors", None) or "strict"
        self._stream: Any = None

    def _real(self) -> Any:
        if self._stream is None:
            self._stream = open(  # noqa: SIM115  (for the task's lifetime)
                1,
                "w",
                buffering=STDOUT_BUFFER,
                encoding=self._encoding,
                errors=self._errors,
                closefd=False,
            )
            if sys.stdout is self:
                # print() holds sys.stdout without a reference of its own while it writes:
                # this object must outlive its replacement.
                KEPT.append(self)
                sys.stdout = self._stream
            _thread.start_new_thread(flush_often, ())
        return self._stream

    def write(self, text: str) -> int:
        return int(self._real().write(text))

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)


def flush_often() -> None:
    """A task's thread: flushes its stdout and stderr every ``FLUSH_EVERY`` seconds."""
    while True:
        time.sleep(FLUSH_EVERY)
        for stream in (sys.stdout, sys.stderr):
            try:  # noqa: SIM105
                stream.flush()
            except Exception:  # the task closed or replaced it: not ours to judge
                pass


class Child:
    """One task's forked process, until it is reaped."""

    __slots__ = ("deadline", "killed", "named", "pid", "start", "task_id", "timed_out")

    def __init__(self, task_id: str, pid: int, start: float, timeout: float | None) -> None:
        self.task_id = task_id
        self.pid = pid
        self.start = start
        self.deadline = None if timeout is None else start + timeout
        self.timed_out = False
        self.killed = False
        self.named = False  # its pid was sent in a STARTED


class ForkServer:
    def __init__(self, control: int) -> None:
        self.sock = _socket.socket(fileno=control)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        # A stray print here must not land anywhere that matters; stderr is the agent's log.
        os.dup2(2, 1)
        os.close(null)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # poll, not selectors: its Python layer runs twice per task here, and every page a
        # pass of this loop writes is copied while a child shares it.
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.register(self.wake_r, select.POLLIN)
        self.codes = TaskCodes("fork server")
        self.by_pid: dict[int, Child] = {}
        self.by_task: dict[str, Child] = {}
        self.decoder = FrameDecoder()
        self.fds: deque[int] = deque()  # received with RUNs, not yet used
        self.attachment_limit = DEFAULT_ATTACHMENT_LIMIT
        self.stopping = False

    def private_fds(self) -> list[int]:
        return [self.sock.fileno(), self.wake_r, self.wake_w, *self.fds]

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError:
            # The agent is gone: nobody is left to report to, so wind down.
            self.stopping = True

    # requests ---------------------------------------------------------------------------

    def read_requests(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(REQUEST_READ, ANCILLARY)
        except InterruptedError:
            return
        except OSError:
            data, ancillary = b"", []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                count = len(payload) // 4
                self.fds.extend(struct.unpack(f"{count}i", payload[: count * 4]))
        if not data:
            self.stopping = True  # the agent is gone
            return
        for message in self.decoder.feed(data):
            self.handle(message)

    def handle(self, message: Any) -> None:
        kind = message[0]
        if kind == RUN:
            self.start_task(run_request(message))
        elif kind == KILL:
            child = self.by_task.get(message[1])
            if child is not None and not child.killed:
                child.killed = True
                kill_group(child.pid)
        elif kind == CONFIG:
            self.attachment_limit = int(
                message[1].get("attachment_limit", DEFAULT_ATTACHMENT_LIMIT)
            )
        elif kind == STOP:
            self.stopping = True

    def start_task(self, request: RunRequest) -> None:
        task_id = request.task_id
        out, res = self.fds.popleft(), self.fds.popleft()
        code, error = self.codes.get(
            request.sha256, request.module_name, request.source, request.path
        )
        if code is None:
            os.close(out)
            os.close(res)
            self.send((FAILED, task_id, error))
            return
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                child_main(self, code, request, out, res)
                status = 0
            finally:
                # Never fall back into the fork server's loop, whatever happened.
                os._exit(status)
        os.close(out)
        os.close(res)
        child = Child(task_id, pid, start, request.timeout)
        self.by_pid[pid] = child
        self.by_task[task_id] = child

    # children ---------------------------------------------------------------------------

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
            try:  # noqa: SIM105
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            self.send(
                (
                    EXITED,
                    child.task_id,
                    status,
                    child.timed_out,
                    child.killed,
                    time.monotonic() - child.start,
                )
            )

    def tick(self, now: float) -> float | None:
        """Kill tasks past their deadline, name tasks running for a while; returns the seconds
        until one of these is due next (None: never)."""
        wake = None
        named = []
        for child in self.by_task.values():
            deadline = child.deadline
            if deadline is not None and not child.timed_out:
                if now >= deadline:
                    child.timed_out = True
                    kill_group(child.pid)
                elif wake is None or deadline < wake:
                    wake = deadline
            if not child.named:
                due = child.start + STARTED_AFTER
                if now >= due:
                    child.named = True
                    named.append((child.task_id, child.pid))
                elif wake is None or due < wake:
                    wake = due
        if named:
            self.send((STARTED, named))
        return None if wake is None else max(0.0, wake - now)

    # main loop --------------------------------------------------------------------------

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
        try:
            self.loop()
        finally:
            self.shutdown()

    def loop(self) -> None:
        poll = self.poller.poll
        wake = self.wake_r
        while not self.stopping:
            wait = self.tick(time.monotonic()) if self.by_task else None
            try:
                events = poll(None if wait is None else wait * 1000)
            except InterruptedError:
                events = []
            for fd, _ in events:
                if fd == wake:
                    drain(wake)
                else:
                    self.read_requests()
            # Reaping on every pass also covers a SIGCHLD that arrived before a select.
            if self.by_pid:
                self.reap()

    def shutdown(self) -> None:
        for child in list(self.by_task.values()):
            child.killed = True
            kill_group(child.pid)
        deadline = time.monotonic() + 5
        while self.by_pid and time.monotonic() < deadline:
            self.reap()
            if self.by_pid:
                time.sleep(0.01)


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
    ForkServer(int(sys.argv[1])).serve()
