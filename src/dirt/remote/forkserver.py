"""Warm fork server: runs each task module in its own forked process on a node.

Shipped as source text: the agent starts ``python -c BOOTSTRAP`` and sends this source as the
first frame on its stdin; stdlib only, no imports of dirt.
TaskChannel, run_task, kill_group and the framing constants come from ``tasking.py``,
which ``dirt.remote.source()`` ships in front of this text. It is single-threaded on purpose
(selectors plus a SIGCHLD wakeup pipe) so that ``os.fork()`` is safe: a forked child of a
threaded process can inherit a held lock.

Protocol with the agent, over the fork server's stdin and stdout: frames of a 4-byte big-endian
length followed by a ``marshal`` payload.

agent -> fork server:
    ("run", task_id, module_name, sha256, source_or_None, kwargs, timeout_or_None)
    ("kill", task_id)
    ("stop",)
fork server -> agent:
    ("ready", pid, tmpdir)                tmpdir holds the children's output and result files
    ("started", task_id, child_pid)      so the agent can kill the group if we die
    ("done", task_id, outcome)           outcome as in the agent protocol
    ("error", message)                   a request the fork server could not act on
"""

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
import traceback
import urllib.parse  # noqa: F401


def child_main(server, task_id, code, module_name, kwargs, out_path, res_path):
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
    outcome = {"results": results, "error": error}
    try:
        data = marshal.dumps(outcome)
        if error is None and unserialisable_type(results) is not None:
            # marshal also takes sets and code objects; the master side cannot.
            raise ValueError
    except Exception:
        name = unserialisable_type(results) or type(results).__name__
        data = marshal.dumps({"results": None, "error": f"results not serialisable: {name}"})
    tmp = res_path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    # The rename makes the result file appear complete or not at all.
    os.rename(tmp, res_path)


class Running:
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


class ForkServer:
    def __init__(self):
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
        self.codes = {}
        self.by_pid = {}
        self.by_task = {}
        self.seq = 0
        self.buffer = b""
        self.stopping = False
        self.agent_gone = False

    def private_fds(self):
        return [self.proto_in, self.proto_out, self.wake_r, self.wake_w, self.selector.fileno()]

    def send(self, message):
        if self.agent_gone:
            return
        data = marshal.dumps(message)
        view = memoryview(HEADER.pack(len(data)) + data)
        try:
            while view:
                view = view[os.write(self.proto_out, view) :]
        except OSError:
            # The agent is gone (its gateway was killed): nobody is left to report to, so
            # wind down, killing what still runs.
            self.agent_gone = True
            self.stopping = True

    # requests ---------------------------------------------------------------------------

    def handle(self, message):
        kind = message[0]
        if kind == "run":
            self.start_task(*message[1:])
        elif kind == "kill":
            running = self.by_task.get(message[1])
            if running is not None and not running.killed:
                running.killed = True
                kill_group(running.pid)
        elif kind == "stop":
            self.stopping = True
        else:
            self.send(("error", f"unknown request {kind!r}"))

    def start_task(self, task_id, module_name, sha, source, kwargs, timeout):
        code = self.codes.get(sha)
        if code is None:
            if source is None:
                self.send(("done", task_id, failed(f"fork server has no source for {sha}")))
                return
            try:
                code = compile(source, f"<dirt task {module_name}>", "exec")
            except BaseException:
                self.send(("done", task_id, failed(traceback.format_exc())))
                return
            self.codes[sha] = code
        self.seq += 1
        base = os.path.join(self.tmpdir, str(self.seq))
        running = Running()
        running.task_id = task_id
        running.timeout = timeout
        running.timed_out = False
        running.killed = False
        running.out_path = base + ".out"
        running.res_path = base + ".res"
        running.start = time.monotonic()
        running.deadline = None if timeout is None else running.start + timeout
        pid = os.fork()
        if pid == 0:
            status = 70
            try:
                child_main(
                    self, task_id, code, module_name, kwargs, running.out_path, running.res_path
                )
                status = 0
            finally:
                # Never fall back into the fork server's loop, whatever happened.
                os._exit(status)
        running.pid = pid
        self.by_pid[pid] = running
        self.by_task[task_id] = running
        self.send(("started", task_id, pid))

    # children ---------------------------------------------------------------------------

    def reap(self):
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
            self.send(("done", running.task_id, self.outcome(running, status)))

    def outcome(self, running, status):
        duration = time.monotonic() - running.start
        exit_code = os.waitstatus_to_exitcode(status)
        sig = None
        if exit_code < 0:
            sig, exit_code = -exit_code, None
        results = None
        error = None
        got_results = False
        try:
            with open(running.res_path, "rb") as fh:
                data = marshal.loads(fh.read())
            results, error = data["results"], data["error"]
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
        return {
            "results": results,
            "error": error,
            "exit_code": exit_code,
            "signal": sig,
            "timed_out": running.timed_out,
            "killed": running.killed,
            "duration": duration,
            "output": output,
        }

    def expire(self, now):
        for running in list(self.by_task.values()):
            deadline = running.deadline
            if deadline is not None and now >= deadline and not running.timed_out:
                running.timed_out = True
                kill_group(running.pid)

    def next_wait(self, now):
        deadlines = [
            r.deadline for r in self.by_task.values() if r.deadline is not None and not r.timed_out
        ]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    # main loop --------------------------------------------------------------------------

    def read_requests(self):
        try:
            chunk = os.read(self.proto_in, 1 << 20)
        except InterruptedError:
            return
        if not chunk:
            # The agent is gone; nobody is left to report to.
            self.stopping = True
            return
        self.buffer += chunk
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + size:
                break
            payload = self.buffer[HEADER.size : HEADER.size + size]
            self.buffer = self.buffer[HEADER.size + size :]
            self.handle(marshal.loads(payload))

    def serve(self):
        signal.set_wakeup_fd(self.wake_w)
        # A Python-level handler is needed for the wakeup fd to be written; the real work
        # happens in the loop.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Objects made by the imports above are never freed; freezing them keeps the
        # children's garbage collector from touching (and copying) those pages.
        gc.collect()
        gc.freeze()
        self.send(("ready", os.getpid(), self.tmpdir))
        try:
            self.loop()
        finally:
            self.shutdown()

    def loop(self):
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

    def shutdown(self):
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


def failed(error):
    return {
        "results": None,
        "error": error,
        "exit_code": None,
        "signal": None,
        "timed_out": False,
        "killed": False,
        "duration": 0.0,
        "output": "",
    }


def drain(fd):
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


def read_tail(path):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - OUTPUT_TAIL))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", "replace")


def signal_name(sig):
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


if __name__ == "__main__":
    ForkServer().serve()
