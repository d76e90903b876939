"""The agent's "process" isolation: tasks run in children of a warm fork server (forkserver.py).

Stdlib only; shipped in the agent's source (see ``dirt.remote.source``). For each task the agent
makes two pipes (the task's stdout and stderr, and its results), passes their write ends to the
fork server with the RUN, and reads the read ends itself in one reader thread: output goes
through the task's `OutputBuffer` to the `Sink` (on to the master), results are decoded, and when
the fork server says the task's process exited, its outcome is put together here. When the sink
is full, the reader stops reading the pipes (their writers wait) except output beyond a task's
head, which is kept in its bounded tail: memory stays bounded and a task printing without end
is not slowed.

If the fork server dies, every task it was running is reported done with an error naming the
cause (their processes are killed: those it named, and any process carrying its cookie), and a
new fork server is started for the next task; only when that start fails too does a task fail
with the start error (the agent itself stays up and keeps answering).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from dirt.remote.protocol import (
    BLOB,
    BOOTSTRAP,
    CHUNK_SIZE,
    CONFIG,
    EXITED,
    FAILED,
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
    compiled,
    encode,
    frame,
    outcome,
)
from dirt.remote.streams import (
    DEFAULT_OUTPUT_LIMIT,
    FLUSH_AFTER,
    Sink,
)
from dirt.remote.task_pipes import TaskPipes, marked_processes
from dirt.remote.tasking import kill_group

FORKSERVER_START_TIMEOUT = 60.0
PIPE_SIZE_OP = 1031  # fcntl.F_SETPIPE_SZ (named in fcntl from Python 3.10)
PIPE_SIZE = 1 << 20  # asked of each output pipe (Linux; best effort): fewer, bigger reads
TASK_COOKIE = "DIRT_TASK_COOKIE"


class ForkServerClient:
    """One running fork server process, and the pipes of the tasks it is running."""

    def __init__(self, code: bytes, config: dict[str, Any], sink: Sink) -> None:
        """Start a fork server running `code` (its program, ``protocol.compiled``)."""
        self.sink = sink
        self.output_limit = int(config.get("output_limit", DEFAULT_OUTPUT_LIMIT))
        # Kept open for the fork server's lifetime, to quote its last words if it dies.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        # Every process of its tasks inherits this (as Jenkins marks a build's processes), so
        # they can be found and killed should the fork server die before naming them.
        token = os.urandom(12).hex()
        self.cookie = f"{TASK_COOKIE}={token}"
        self.sock, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BOOTSTRAP, str(theirs.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self.stderr,
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, TASK_COOKIE: token},
            )
        finally:
            theirs.close()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(frame(code))
            self.proc.stdin.close()
        except OSError:
            pass  # it died at once; the wait for READY below reports why
        self.decoder = FrameDecoder()
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.tasks: dict[str, TaskPipes] = {}
        self.known_shas: set[str] = set()
        self.throttled = False
        self.stopping = False
        self.dead = False
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock.fileno(), selectors.EVENT_READ, "control")
        self.backlog = self.wait_ready()
        self.request((CONFIG, config))
        self.reader = threading.Thread(target=self.read_loop, name="dirt-forkserver-reader")
        self.reader.daemon = True
        self.reader.start()

    def wait_ready(self) -> list[Any]:
        """Messages after READY (read with it); RuntimeError when READY does not come."""
        deadline = time.monotonic() + FORKSERVER_START_TIMEOUT
        messages: list[Any] = []
        while not messages:
            wait = deadline - time.monotonic()
            if wait <= 0 or not self.selector.select(wait):
                break
            data = self.sock.recv(READ_SIZE)
            if not data:
                break
            messages = self.decoder.feed(data)
        if not messages or messages[0][0] != READY:
            reason = self.death_reason()
            self.close_files()
            raise RuntimeError(f"fork server did not start: {reason}")
        self.pid: int = messages[0][1]
        return messages[1:]

    # requests (the agent's threads) -----------------------------------------------------------

    def request(self, message: tuple[Any, ...], fds: tuple[int, ...] = ()) -> None:
        data = encode(message)
        with self.write_lock:
            if fds:
                ancillary = [
                    (socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))
                ]
                sent = self.sock.sendmsg([data], ancillary)
                data = data[sent:]
            if data:
                self.sock.sendall(data)

    def run(self, request: RunRequest) -> bool:
        """Hand a task (its source given) to the fork server; False if the server is dead."""
        sha = request.sha256
        if sha in self.known_shas:
            request = request._replace(source=None)
        out_r, out_w = os.pipe()
        res_r, res_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(out_r, PIPE_SIZE_OP, PIPE_SIZE)
        os.set_blocking(out_r, False)
        os.set_blocking(res_r, False)
        task = TaskPipes(request, out_r, res_r, self.output_limit)
        with self.lock:
            if self.dead:
                for fd in (out_r, out_w, res_r, res_w):
                    os.close(fd)
                return False
            self.tasks[request.task_id] = task
            task.paused = self.throttled
            if not task.paused:
                self._watch(task, True)
        try:
            self.request((RUN, *request), (out_w, res_w))
            self.known_shas.add(sha)
        except OSError:
            pass  # the reader sees the fork server gone and reports this task with the others
        finally:
            os.close(out_w)
            os.close(res_w)
        return True

    def kill(self, task_id: str) -> None:
        with self.lock:
            if task_id not in self.tasks:
                return
        with contextlib.suppress(OSError):
            self.request((KILL, task_id))

    def running(self) -> int:
        with self.lock:
            return len(self.tasks)

    # the reader thread ------------------------------------------------------------------------

    def _watch(self, task: TaskPipes, on: bool) -> None:
        """Read the task's pipes (or stop reading them); output beyond its head is read always
        (it is kept in the bounded tail, never queued)."""
        for fd, kind in ((task.out_fd, "out"), (task.res_fd, "res")):
            if fd < 0 or (not on and kind == "out" and task.output.total > task.output.head):
                continue
            if on:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.register(fd, selectors.EVENT_READ, (task, kind))
            else:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(fd)

    def read_loop(self) -> None:
        try:
            for message in self.backlog:
                self.from_server(message)
            while not self.dead:
                wait = self.flush_due(time.monotonic())
                for key, _ in self.selector.select(wait):
                    if key.data == "control":
                        self.read_control()
                    else:
                        self.read_pipe(*key.data)
                self.throttle()
        except Exception:
            # A bug here must not leave the tasks unreported: treat it as the server's death.
            import traceback

            traceback.print_exc()
        self.on_eof()

    def throttle(self) -> None:
        """Stop reading task pipes while the sink is full; read them again once it is not."""
        full = self.sink.full()
        if full == self.throttled:
            return
        self.throttled = full
        with self.lock:
            tasks = list(self.tasks.values())
        for task in tasks:
            task.paused = full
            self._watch(task, not full)

    def flush_due(self, now: float) -> float | None:
        """Pass on the output that is due; returns the seconds until more is (None: never)."""
        with self.lock:
            tasks = list(self.tasks.values())
        wake = None
        for task in tasks:
            due = task.output.due_at()
            if due is None:
                continue
            if due <= now:
                self.send_output(task)
                due = task.output.due_at()
            if due is not None and (wake is None or due < wake):
                wake = due
        if self.throttled:
            # Nothing wakes this thread when the sink drains: look again soon.
            wake = now + FLUSH_AFTER / 5 if wake is None else min(wake, now + FLUSH_AFTER / 5)
        return None if wake is None else max(0.0, wake - now)

    def send_output(self, task: TaskPipes, final: bool = False) -> bytes:
        """Put the task's due output in the sink (all of it when `final`: then returns the last
        piece, which rides in the DONE). Beyond the head, output waits while the sink is full."""
        last = b""
        if final:
            chunks, last = task.output.final()
        elif task.output.total > task.output.head and self.sink.full():
            return last
        else:
            chunks = task.output.take(time.monotonic())
        for offset, data in chunks:
            self.sink.data(task.task_id, (OUTPUT, task.task_id, offset, data), len(data), False)
        return last

    def read_pipe(self, task: TaskPipes, kind: str, drain: bool = False) -> None:
        """Read what a task's pipe holds (all of it, when `drain`); close it at its end."""
        fd = task.out_fd if kind == "out" else task.res_fd
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
                self.close_pipe(task, kind)
                return
            if kind == "out":
                task.output.feed(data, time.monotonic())
                if task.output.head_size >= CHUNK_SIZE:
                    self.send_output(task)
            else:
                for message in task.decoder.feed(data):
                    self.from_child(task, message)
            if not drain:
                return

    def close_pipe(self, task: TaskPipes, kind: str) -> None:
        fd = task.out_fd if kind == "out" else task.res_fd
        if fd < 0:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(fd)
        os.close(fd)
        if kind == "out":
            task.out_fd = -1
        else:
            task.res_fd = -1

    def from_child(self, task: TaskPipes, message: Any) -> None:
        if message[0] == BLOB:
            data = message[2]
            self.sink.data(task.task_id, (BLOB, task.task_id, message[1], data), len(data), False)
        elif message[0] == RESULT:
            task.results, task.error = message[1], message[2]
            task.got_results = True

    def read_control(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except InterruptedError:
            return
        except OSError:
            data = b""
        if not data:
            self.dead = True
            return
        for message in self.decoder.feed(data):
            self.from_server(message)

    def from_server(self, message: Any) -> None:
        kind = message[0]
        if kind == EXITED:
            _, task_id, status, timed_out, killed, duration = message
            task = self.take(task_id)
            if task is not None:
                self.read_pipe(task, "res", drain=True)
                self.read_pipe(task, "out", drain=True)
                self.close_pipe(task, "res")
                self.close_pipe(task, "out")
                last = self.send_output(task, final=True)
                self.sink.finish(task_id, task.outcome(status, timed_out, killed, duration, last))
        elif kind == FAILED:
            task = self.take(message[1])
            if task is not None:
                self.close_pipe(task, "res")
                self.close_pipe(task, "out")
                self.sink.finish(message[1], outcome(error=message[2]))
        elif kind == STARTED:
            with self.lock:
                for task_id, pid in message[1]:
                    task = self.tasks.get(task_id)
                    if task is not None:
                        task.pid = pid

    def take(self, task_id: str) -> TaskPipes | None:
        with self.lock:
            return self.tasks.pop(task_id, None)

    def on_eof(self) -> None:
        with self.lock:
            self.dead = True
            lost = list(self.tasks.values())
            self.tasks.clear()
        for task in lost:
            self.close_pipe(task, "res")
            self.close_pipe(task, "out")
        if self.stopping and not lost:
            return
        reason = self.death_reason()
        # The children outlive their fork server; take them (and theirs) down.
        named = {t.pid for t in lost if t.pid is not None}
        for pid in named | marked_processes(self.cookie):
            kill_group(pid)
        for task in lost:
            self.sink.finish(task.task_id, outcome(error=f"fork server died ({reason}); task lost"))

    def death_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        try:
            self.stderr.seek(0)
            tail = self.stderr.read()[-2000:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            tail = ""
        if tail:
            reason += ": " + tail
        return reason

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            self.request((STOP,))
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.reader.is_alive():
            self.reader.join(timeout)
        self.close_files()

    def close_files(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            self.selector.close()
        with contextlib.suppress(OSError, ValueError):
            self.stderr.close()


class ProcessRunner:
    """Runs each task in a forked child; restarts the fork server when it dies."""

    def __init__(self, config: dict[str, Any], sink: Sink) -> None:
        try:
            self.code = compiled(config["forkserver_source"], "<dirt forkserver>")
        except (SyntaxError, ValueError) as exc:
            raise RuntimeError(f"fork server source does not compile: {exc}") from exc
        self.config: dict[str, Any] = {
            key: config[key] for key in ("output_limit", "attachment_limit") if key in config
        }
        self.sink = sink
        # Kept here too so a restarted fork server can be given sources again.
        self.sources: dict[str, bytes] = {}
        self.server: ForkServerClient | None = self._start()

    def _start(self) -> ForkServerClient:
        return ForkServerClient(self.code, self.config, self.sink)

    def run(self, request: RunRequest) -> None:
        task_id, sha = request.task_id, request.sha256
        if request.source is not None:
            self.sources[sha] = request.source
        else:
            source = self.sources.get(sha)
            if source is None:
                self.sink.finish(task_id, outcome(error=f"agent has no source for {sha}"))
                return
            request = request._replace(source=source)
        for _ in range(2):
            server = self.server
            if server is None or server.dead:
                try:
                    server = self.server = self._start()
                except Exception as exc:
                    self.server = None
                    self.sink.finish(task_id, outcome(error=str(exc)))
                    return
            if server.run(request):
                return
        self.sink.finish(task_id, outcome(error="fork server keeps dying; task not run"))

    def kill(self, task_id: str) -> None:
        if self.server is not None:
            self.server.kill(task_id)

    def running(self) -> int:
        return 0 if self.server is None else self.server.running()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
