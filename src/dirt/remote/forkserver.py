"""Warm fork server: runs each task module in its own forked process on a node.

Shipped as source text: the agent starts ``python -c BOOTSTRAP`` and sends this source as the
first frame on its stdin; stdlib only. ``dirt.remote.source()`` ships it after protocol.py and
tasking.py and drops the imports between them; the messages are in ``protocol.py``. It is
single-threaded on purpose (selectors plus a SIGCHLD wakeup pipe) so that ``os.fork()`` is safe:
a forked child of a threaded process can inherit a held lock.
"""

from __future__ import annotations

# Besides what the server itself uses, common stdlib modules (the F401 ones) are imported once
# here so that each forked task finds them already loaded.
import collections  # noqa: F401
import contextlib
import datetime  # noqa: F401
import errno
import functools  # noqa: F401
import gc
import glob  # noqa: F401
import hashlib  # noqa: F401
import io  # noqa: F401
import itertools  # noqa: F401
import json  # noqa: F401
import logging  # noqa: F401
import marshal
import math  # noqa: F401
import os
import pathlib  # noqa: F401
import platform  # noqa: F401
import random  # noqa: F401
import re  # noqa: F401
import selectors
import shutil
import signal
import socket  # noqa: F401
import subprocess  # noqa: F401
import sys
import tempfile
import textwrap  # noqa: F401
import threading  # noqa: F401
import time
import urllib.parse  # noqa: F401
from types import CodeType
from typing import Any

from dirt.remote.protocol import (
    DONE,
    ERROR,
    KILL,
    OUTPUT_TAIL,
    READ_SIZE,
    READY,
    RUN,
    STARTED,
    STOP,
    FrameDecoder,
    RunRequest,
    encode,
    outcome,
    run_request,
    signal_name,
    unserialisable_type,
)
from dirt.remote.tasking import TaskCodes, kill_group, run_task


def child_main(
    server: ForkServer,
    code: CodeType,
    module_name: str,
    kwargs: dict[str, Any],
    out_path: str,
    res_path: str,
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
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)

    results, error = run_task(code, module_name, kwargs)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        data = marshal.dumps((results, error))
        if error is None and unserialisable_type(results) is not None:
            # marshal also takes sets and code objects; the master side cannot.
            raise ValueError
    except Exception:
        name = unserialisable_type(results) or type(results).__name__
        data = marshal.dumps((None, f"results not serialisable: {name}"))
    tmp = res_path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    # The rename makes the result file appear complete or not at all.
    os.rename(tmp, res_path)


class Running:
    """One task's forked child, while it runs."""

    __slots__ = (
        "deadline",
        "killed",
        "out_path",
        "pid",
        "res_path",
        "start",
        "task_id",
        "timed_out",
        "timeout",
    )

    def __init__(self, task_id: str, timeout: float | None, base: str) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.timed_out = False
        self.killed = False
        self.out_path = base + ".out"
        self.res_path = base + ".res"
        self.start = time.monotonic()
        self.deadline = None if timeout is None else self.start + timeout
        self.pid = 0


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
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proto_in, selectors.EVENT_READ, "proto")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.tmpdir = tempfile.mkdtemp(prefix="dirt-forkserver-")
        self.codes = TaskCodes("fork server")
        self.by_pid: dict[int, Running] = {}
        self.by_task: dict[str, Running] = {}
        self.seq = 0
        self.decoder = FrameDecoder()
        self.stopping = False
        self.agent_gone = False

    def private_fds(self) -> list[int]:
        return [self.proto_in, self.proto_out, self.wake_r, self.wake_w, self.selector.fileno()]

    def send(self, message: tuple[Any, ...]) -> None:
        if self.agent_gone:
            return
        view = memoryview(encode(message))
        try:
            while view:
                view = view[os.write(self.proto_out, view) :]
        except OSError:
            # The agent is gone (its gateway was killed): nobody is left to report to, so
            # wind down, killing what still runs.
            self.agent_gone = True
            self.stopping = True

    # requests ---------------------------------------------------------------------------

    def handle(self, message: Any) -> None:
        kind = message[0]
        if kind == RUN:
            self.start_task(run_request(message))
        elif kind == KILL:
            running = self.by_task.get(message[1])
            if running is not None and not running.killed:
                running.killed = True
                kill_group(running.pid)
        elif kind == STOP:
            self.stopping = True
        else:
            self.send((ERROR, f"unknown request {kind!r}"))

    def start_task(self, request: RunRequest) -> None:
        task_id, module_name = request.task_id, request.module_name
        code, error = self.codes.get(request.sha256, module_name, request.source)
        if code is None:
            self.send((DONE, task_id, outcome(error=error)))
            return
        self.seq += 1
        running = Running(task_id, request.timeout, os.path.join(self.tmpdir, str(self.seq)))
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                child_main(
                    self, code, module_name, request.kwargs, running.out_path, running.res_path
                )
                status = 0
            finally:
                # Never fall back into the fork server's loop, whatever happened.
                os._exit(status)
        running.pid = pid
        self.by_pid[pid] = running
        self.by_task[task_id] = running
        self.send((STARTED, task_id, pid))

    # children ---------------------------------------------------------------------------

    def reap(self) -> None:
        while self.by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            running = self.by_pid.pop(pid, None)
            if running is None:
                continue
            del self.by_task[running.task_id]
            # Whatever the task left behind in its process group goes with it.
            kill_group(pid)
            self.send((DONE, running.task_id, self.outcome_of(running, status)))

    def outcome_of(self, running: Running, status: int) -> tuple[Any, ...]:
        duration = time.monotonic() - running.start
        exit_code: int | None = os.waitstatus_to_exitcode(status)
        sig = None
        if exit_code is not None and exit_code < 0:
            sig, exit_code = -exit_code, None
        results = None
        error = None
        got_results = False
        try:
            with open(running.res_path, "rb") as fh:
                results, error = marshal.loads(fh.read())
            got_results = True
        except FileNotFoundError:
            pass
        except Exception as exc:
            error = f"task result file unreadable: {exc}"
        if running.timed_out:
            error = f"task timed out after {running.timeout:g}s and was killed"
            results = None
        elif running.killed:
            error = "task was killed on request"
            results = None
        elif not got_results and error is None:
            if sig is not None:
                error = f"task process died from signal {sig} ({signal_name(sig)}) without results"
            else:
                error = f"task process exited with code {exit_code} without results"
        output = read_tail(running.out_path)
        for path in (running.out_path, running.res_path, running.res_path + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return outcome(
            results=results,
            error=error,
            exit_code=exit_code,
            signal=sig,
            timed_out=running.timed_out,
            killed=running.killed,
            duration=duration,
            output=output,
        )

    def expire(self, now: float) -> None:
        for running in list(self.by_task.values()):
            deadline = running.deadline
            if deadline is not None and now >= deadline and not running.timed_out:
                running.timed_out = True
                kill_group(running.pid)

    def next_wait(self, now: float) -> float | None:
        deadlines = [
            r.deadline for r in self.by_task.values() if r.deadline is not None and not r.timed_out
        ]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

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
        self.send((READY, os.getpid(), self.tmpdir))
        try:
            self.loop()
        finally:
            self.shutdown()

    def loop(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            self.expire(now)
            try:
                events = self.selector.select(self.next_wait(now))
            except InterruptedError:
                events = []
            for key, _ in events:
                if key.data == "wake":
                    drain(self.wake_r)
                else:
                    self.read_requests()
            # Reaping on every pass also covers a SIGCHLD that arrived before a select.
            if self.by_pid:
                self.reap()

    def shutdown(self) -> None:
        try:
            for running in list(self.by_task.values()):
                running.killed = True
                kill_group(running.pid)
            deadline = time.monotonic() + 5
            while self.by_pid and time.monotonic() < deadline:
                self.reap()
                if self.by_pid:
                    time.sleep(0.01)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


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


def read_tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - OUTPUT_TAIL))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", "replace")


if __name__ == "__main__":
    ForkServer().serve()
