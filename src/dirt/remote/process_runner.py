"""The agent's "process" isolation: tasks run in children of a warm fork server (forkserver.py).

Stdlib only; shipped in the agent's source (see ``dirt.remote.source``). What the fork server
sends (output and attachment chunks, outcomes) goes on to the master through the agent's
`Sink`; a reader thread here does that, and waits when the sink is full, so the fork server
stops reading its tasks' pipes and nothing piles up. If the fork server dies, every task it was
running is reported done with an error naming the cause, and a new fork server is started for
the next task; only when that start fails too does a task fail with the start error (the agent
itself stays up and keeps answering).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any

from dirt.remote.protocol import (
    BLOB,
    BOOTSTRAP,
    CONFIG,
    DONE,
    KILL,
    OUTPUT,
    READ_SIZE,
    READY,
    RUN,
    STARTED,
    STOP,
    FrameDecoder,
    RunRequest,
    encode,
    frame,
    outcome,
)
from dirt.remote.streams import Sink
from dirt.remote.tasking import kill_group

FORKSERVER_START_TIMEOUT = 60.0
PIPE_SIZE_OP = 1031  # fcntl.F_SETPIPE_SZ (named in fcntl from Python 3.10)
TASK_COOKIE = "DIRT_TASK_COOKIE"


def marked_processes(cookie: str) -> set[int]:
    """Pids of the processes whose environment holds `cookie` ("NAME=value"), from /proc
    (Linux; elsewhere none are found)."""
    marker = cookie.encode() + b"\0"
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker in fh.read():
                    found.add(int(entry))
        except OSError:
            continue
    return found


class ForkServerClient:
    """One running fork server process and the tasks it is running."""

    def __init__(self, source: bytes, config: dict[str, Any], sink: Sink) -> None:
        self.sink = sink
        # Kept open for the fork server's lifetime, to quote its last words if it dies.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        # Every process of its tasks inherits this (as Jenkins marks a build's processes), so
        # they can be found and killed should the fork server die before naming them.
        self.cookie = f"{TASK_COOKIE}={os.urandom(12).hex()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            close_fds=True,
            env={**os.environ, TASK_COOKIE: self.cookie.partition("=")[2]},
        )
        self.stdin: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        self.stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        try:
            self.stdin.write(frame(source) + encode((CONFIG, config)))
            self.stdin.flush()
        except OSError:
            pass  # it died at once; the wait for READY below reports why
        self.out_fd = self.stdout.fileno()
        with contextlib.suppress(OSError):
            # Fewer, bigger reads of the fork server's chunks (Linux; best effort).
            fcntl.fcntl(self.out_fd, PIPE_SIZE_OP, 1 << 20)
        self.decoder = FrameDecoder()
        self.backlog: list[Any] = []  # messages decoded but not yet handled
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        # task_id -> child pid (None until the fork server says which)
        self.in_flight: dict[str, int | None] = {}
        self.known_shas: set[str] = set()
        self.stopping = False
        self.dead = False
        message = self.read_message(FORKSERVER_START_TIMEOUT)
        if message is None or message[0] != READY:
            reason = self.death_reason()
            self.close_files()
            raise RuntimeError(f"fork server did not start: {reason}")
        self.pid: int = message[1]
        self.reader = threading.Thread(target=self.read_loop, name="dirt-forkserver-reader")
        self.reader.daemon = True
        self.reader.start()

    def read_message(self, timeout: float) -> Any:
        """One message from the fork server, or None at EOF or after timeout seconds."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.out_fd, selectors.EVENT_READ)
            while not self.backlog:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return None
                if not sel.select(wait):
                    continue
                chunk = os.read(self.out_fd, READ_SIZE)
                if not chunk:
                    return None
                self.backlog.extend(self.decoder.feed(chunk))
        return self.backlog.pop(0)

    def read_loop(self) -> None:
        messages, self.backlog = self.backlog, []
        while True:
            for message in messages:
                self.handle(message)
            try:
                # Blocking read: this thread has nothing else to do meanwhile.
                chunk = os.read(self.out_fd, READ_SIZE)
                if not chunk:
                    break
                messages = self.decoder.feed(chunk)
            except Exception:
                break
        self.on_eof()

    def handle(self, message: Any) -> None:
        kind = message[0]
        if kind in (OUTPUT, BLOB):
            self.sink.data(message[1], message, len(message[3]))
        elif kind == DONE:
            task_id = message[1]
            with self.lock:
                self.in_flight.pop(task_id, None)
            self.sink.finish(task_id, message[2])
        elif kind == STARTED:
            with self.lock:
                for task_id, pid in message[1]:
                    if task_id in self.in_flight:
                        self.in_flight[task_id] = pid

    def on_eof(self) -> None:
        with self.lock:
            self.dead = True
            lost = dict(self.in_flight)
            self.in_flight.clear()
        if self.stopping and not lost:
            return
        reason = self.death_reason()
        # The children outlive their fork server; take them (and theirs) down.
        for pid in {p for p in lost.values() if p is not None} | marked_processes(self.cookie):
            kill_group(pid)
        for task_id in lost:
            self.sink.finish(task_id, outcome(error=f"fork server died ({reason}); task lost"))

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

    def request(self, message: tuple[Any, ...]) -> None:
        data = encode(message)
        with self.write_lock:
            self.stdin.write(data)
            self.stdin.flush()

    def run(self, request: RunRequest) -> bool:
        """Hand a task (its source given) to the fork server; False if the server is dead."""
        sha = request.sha256
        if sha in self.known_shas:
            request = request._replace(source=None)
        with self.lock:
            if self.dead:
                return False
            self.in_flight[request.task_id] = None
        try:
            self.request((RUN, *request))
        except (OSError, ValueError):
            # The reader thread sees the EOF and reports this task with the others.
            return True
        self.known_shas.add(sha)
        return True

    def kill(self, task_id: str) -> None:
        with self.lock:
            if task_id not in self.in_flight:
                return
        with contextlib.suppress(OSError, ValueError):
            self.request((KILL, task_id))

    def running(self) -> int:
        with self.lock:
            return len(self.in_flight)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping = True
        try:
            self.request((STOP,))
            self.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.reader.is_alive():
            self.reader.join(timeout)
        self.close_files()

    def close_files(self) -> None:
        for fh in (self.stdin, self.stdout, self.stderr):
            with contextlib.suppress(OSError, ValueError):
                fh.close()


class ProcessRunner:
    """Runs each task in a forked child; restarts the fork server when it dies."""

    def __init__(self, config: dict[str, Any], sink: Sink) -> None:
        source = config["forkserver_source"]
        self.source: bytes = source.encode("utf-8") if isinstance(source, str) else source
        self.config: dict[str, Any] = {
            key: config[key] for key in ("output_limit", "attachment_limit") if key in config
        }
        self.sink = sink
        # Kept here too so a restarted fork server can be given sources again.
        self.sources: dict[str, bytes] = {}
        self.server: ForkServerClient | None = self._start()

    def _start(self) -> ForkServerClient:
        return ForkServerClient(self.source, self.config, self.sink)

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
