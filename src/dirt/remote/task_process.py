"""A task's own process under process isolation: forked by the fork server (forkserver.py).

Stdlib only; shipped in the fork server's source before forkserver.py (see
``dirt.remote.source``). A child is forked either for a task the fork server has in hand, or
ahead of time as a *spare*: set up (its own session, ordinary signals, none of the server's fds)
and waiting on a socket of its own for the task the server hands it (``wait_for_task``), so a
task's start costs no fork. Either way ``run_in_child`` runs the task, and the caller exits the
process straight after.
"""

from __future__ import annotations

import _socket
import _thread
import marshal
import os
import struct
import sys
import time

from dirt.remote.protocol import TYPE_CHECKING, FrameDecoder, RunRequest
from dirt.remote.streams import send_results
from dirt.remote.tasking import TaskCodes, run_task

if TYPE_CHECKING:
    import signal
    from collections.abc import Iterable
    from types import CodeType
    from typing import Any
else:
    import _signal as signal  # the same functions, without signal.py's enums

# A task's sys.stdout holds this much before it writes to its pipe (Python's own default for a
# pipe, 4 KiB, makes printing a gigabyte cost 2-3 times what it costs into /dev/null: a pipe
# write per 4 KiB); and what it holds is flushed at least this often (a task that never
# flushes still shows its output while it runs).
STDOUT_BUFFER = 1 << 20
FLUSH_EVERY = 0.5
FDS_PER_RUN = 2  # the write ends of the task's output pipe and result pipe
ANCILLARY = _socket.CMSG_SPACE(64 * 4)  # room for the fds of many RUNs in one read
HANDOVER_READ = 1 << 16


def child_setup(private_fds: Iterable[int]) -> None:
    """Make a just-forked child a task's process: its own session (its process group is what
    a kill or a timeout takes down), ordinary signals, none of the fork server's fds."""
    os.setsid()
    # Undo the fork server's signal plumbing: the task may run subprocesses of its own and
    # expects ordinary SIGCHLD and SIGINT behaviour.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd in private_fds:
        try:  # noqa: SIM105  (contextlib is one more module to load here)
            os.close(fd)
        except OSError:
            pass


def run_in_child(
    code: CodeType, request: RunRequest, out: int, res: int, attachment_limit: int
) -> None:
    """Run the task with stdout and stderr on `out`, and send its results on `res`."""
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
    send_results(res, results, error, attachment_limit)


def handover(request: RunRequest, code: bytes | None, attachment_limit: int) -> tuple[Any, ...]:
    """What the fork server sends a spare for a task (with the task's two pipes as SCM_RIGHTS):
    the request without its source, the marshalled code when the spare was forked before the
    module was compiled (else None), and the attachment limit."""
    return (tuple(request._replace(source=None)), code, attachment_limit)


def wait_for_task(sock: Any, codes: TaskCodes) -> None:
    """Body of a spare: wait for a task on `sock`, then run it. Returns at once (the process
    then exits) when the fork server goes away first: its end of `sock` closes."""
    decoder = FrameDecoder()
    fds: list[int] = []
    messages: list[Any] = []
    while not messages:
        try:
            data, ancillary, _, _ = sock.recvmsg(HANDOVER_READ, ANCILLARY)
        except InterruptedError:
            continue
        except OSError:
            return
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                count = len(payload) // 4
                fds.extend(struct.unpack(f"{count}i", payload[: count * 4]))
        if not data:
            return
        messages = decoder.feed(data)
    sock.close()
    fields, marshalled, attachment_limit = messages[0]
    request = RunRequest(*fields)
    code = marshal.loads(marshalled) if marshalled is not None else None
    if code is None:
        code, error = codes.get(request.sha256, request.module_name, None)
        if code is None:  # the fork server sends the code a spare lacks: a bug if it did not
            raise RuntimeError(error)
    out, res = fds[:FDS_PER_RUN]
    run_in_child(code, request, out, res, attachment_limit)


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
