"""Warm fork server: runs each task of a node in a process of its own, and reaps it.

Shipped as source text: the agent starts ``python -c BOOTSTRAP FD`` and sends this source as the
one frame on its stdin; stdlib only. ``dirt.remote.source()`` ships it after protocol.py,
tasking.py, streams.py and task_process.py and drops the imports between them; the messages are
in ``protocol.py``. It is single-threaded on purpose (selectors plus a SIGCHLD wakeup pipe) so
that ``os.fork()`` is safe: a forked child of a threaded process can inherit a held lock.

It does as little as it can, because a fork is paid by the process that forks: the kernel
copies its page tables, and every page it writes afterwards traps once (copy on write). So the
server loads few modules, and its loop is short: it receives a RUN with the two pipes the agent
made for the task (their write ends, passed over the control socket), hands them to a *spare*
(a child it forked beforehand, already set up and waiting: see task_process.py) or, with none
waiting, forks, and when the child ends, reaps it and says so in one small EXITED message. The
replacement spare is forked while the task runs, so a task's start waits for no fork. The
task's output and results go through those pipes straight to the agent, which reads, limits
and forwards them; nothing passes through here. Timeouts and kills are done here, where the
children are.
"""

from __future__ import annotations

import _socket
import errno
import gc
import marshal
import os
import selectors
import struct
import sys
import time
from collections import deque

from dirt.remote.protocol import (
    CONFIG,
    EXITED,
    FAILED,
    KILL,
    READ_SIZE,
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
from dirt.remote.streams import DEFAULT_ATTACHMENT_LIMIT
from dirt.remote.task_process import (
    ANCILLARY,
    child_setup,
    handover,
    run_in_child,
    wait_for_task,
)
from dirt.remote.tasking import TaskCodes, kill_group

if TYPE_CHECKING:
    import signal
    from types import CodeType
    from typing import Any
else:
    import _signal as signal  # the same functions, without signal.py's enums

# A task running this long is named to the agent with its pid (STARTED), so the agent can kill
# its process group should this server die; quicker tasks need no message of their own.
STARTED_AFTER = 0.05
# Spares kept waiting: as many as tasks have run at once (RUNs for several slots can come
# together), at least SPARES and at most MOST_SPARES (each is a process, idle while it waits).
SPARES = 2
MOST_SPARES = 4
# Spares that died while waiting, one after the other, before the server stops making them
# (something kills them: forking per task still works).
SPARE_DEATHS = 5


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


class Spare:
    """A child forked ahead of a task, set up and waiting on its end of `sock` for one."""

    __slots__ = ("pid", "shas", "sock")

    def __init__(self, pid: int, sock: Any, shas: frozenset[str]) -> None:
        self.pid = pid
        self.sock = sock  # the server's end
        self.shas = shas  # the modules it has compiled (those the server had when it forked)


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
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock.fileno(), selectors.EVENT_READ, "control")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.codes = TaskCodes("fork server")
        self.by_pid: dict[int, Child] = {}
        self.by_task: dict[str, Child] = {}
        self.spares: dict[int, Spare] = {}  # by pid, oldest first
        self.unwanted: set[int] = set()  # spares killed but not yet reaped
        self.spare_target = int(os.environ.get("DIRT_SPARES", SPARES))  # A/B only
        self.spare_deaths = 0  # in a row
        self.decoder = FrameDecoder()
        self.fds: deque[int] = deque()  # received with RUNs, not yet used
        self.attachment_limit = DEFAULT_ATTACHMENT_LIMIT
        self.stopping = False

    def private_fds(self) -> list[int]:
        return [
            self.sock.fileno(),
            self.wake_r,
            self.wake_w,
            self.selector.fileno(),
            *self.fds,
            *(spare.sock.fileno() for spare in self.spares.values()),
        ]

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError:
            # The agent is gone: nobody is left to report to, so wind down.
            self.stopping = True

    # requests ---------------------------------------------------------------------------

    def read_requests(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(READ_SIZE, ANCILLARY)
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
        pid = self.hand_over(request, code, out, res)
        if pid is None:
            pid = self.fork(lambda: run_in_child(code, request, out, res, self.attachment_limit))
        os.close(out)
        os.close(res)
        child = Child(task_id, pid, start, request.timeout)
        self.by_pid[pid] = child
        self.by_task[task_id] = child
        if len(self.by_task) > self.spare_target and self.spare_target:
            self.spare_target = min(MOST_SPARES, len(self.by_task))

    def fork(self, body: Any) -> int:
        """Fork a child that sets itself up, runs `body()` and exits; returns its pid."""
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                child_setup(self.private_fds())
                body()
                status = 0
            finally:
                # Never fall back into the fork server's loop, whatever happened.
                os._exit(status)
        return pid

    # spares -----------------------------------------------------------------------------

    def hand_over(self, request: RunRequest, code: CodeType, out: int, res: int) -> int | None:
        """Give the task to a waiting spare; its pid, or None when none took it."""
        while self.spares:
            pid = next(iter(self.spares))
            spare = self.spares.pop(pid)
            sock = spare.sock
            marshalled = None if request.sha256 in spare.shas else marshal.dumps(code)
            data = encode(handover(request, marshalled, self.attachment_limit))
            rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack("2i", out, res))]
            try:
                sent = sock.sendmsg([data], rights)
                if sent < len(data):
                    sock.sendall(data[sent:])
            except OSError:
                # It died waiting (its reaping is under way): the next one, or a fork.
                self.drop_spare(spare)
                continue
            sock.close()
            self.spare_deaths = 0
            return pid
        return None

    def fork_spare(self) -> None:
        ours, theirs = _socket.socketpair()
        codes = self.codes

        def body() -> None:
            ours.close()
            wait_for_task(theirs, codes)

        try:
            pid = self.fork(body)
        finally:
            theirs.close()
        self.spares[pid] = Spare(pid, ours, frozenset(codes.shas()))

    def drop_spare(self, spare: Spare) -> None:
        """Kill a spare (it has no task) and forget it; its reaping says nothing."""
        self.spares.pop(spare.pid, None)
        self.unwanted.add(spare.pid)
        kill_group(spare.pid)
        spare.sock.close()

    # children ---------------------------------------------------------------------------

    def reap(self) -> None:
        while self.by_pid or self.spares or self.unwanted:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.by_pid.pop(pid, None)
            if child is None:
                self.reaped_spare(pid)
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

    def reaped_spare(self, pid: int) -> None:
        self.unwanted.discard(pid)
        spare = self.spares.pop(pid, None)
        if spare is None:
            return
        # It died waiting, with no task: something killed it.
        spare.sock.close()
        try:  # noqa: SIM105
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        self.spare_deaths += 1
        if self.spare_deaths >= SPARE_DEATHS:
            self.spare_target = 0

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
        select = self.selector.select
        while not self.stopping:
            wait = self.tick(time.monotonic()) if self.by_task else None
            if len(self.spares) < self.spare_target:
                # A spare is forked only when nothing else is waiting to be done: one per pass.
                wait = 0
            try:
                events = select(wait)
            except InterruptedError:
                events = []
            for key, _ in events:
                if key.data == "wake":
                    drain(self.wake_r)
                else:
                    self.read_requests()
            # Reaping on every pass also covers a SIGCHLD that arrived before a select.
            if self.by_pid or self.spares or self.unwanted:
                self.reap()
            if not events and not self.stopping and len(self.spares) < self.spare_target:
                self.fork_spare()

    def shutdown(self) -> None:
        for child in list(self.by_task.values()):
            child.killed = True
            kill_group(child.pid)
        for spare in list(self.spares.values()):
            self.drop_spare(spare)
        deadline = time.monotonic() + 5
        while (self.by_pid or self.unwanted) and time.monotonic() < deadline:
            self.reap()
            if self.by_pid or self.unwanted:
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
