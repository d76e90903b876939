"""The web server in processes of its own, beside the dispatcher's (`dirt serve`).

One process, one GIL: a dispatcher and a web server in the same process starve each other (a
page full of readers stops the work). So `dirt serve` binds the web socket itself and starts
`[web] workers` web processes (`python -m dirt.web.child`) that share it; the kernel spreads
the connections. Each has its own store connections and hears the dispatcher's writes through
the change-sequence poll it does for any other writer.

A web process gets from this one: the listening socket, the settings (pickled over a pipe) and
a lifeline pipe whose end it watches: when this process dies, even by SIGKILL, the pipe closes
and the web processes stop too. One that dies on its own is started again (at most a few times
a minute; then the dispatcher goes on alone and the log says why).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from dirt.config import Settings
from dirt.errors import ConfigError
from dirt.web.run import display_url, listen, tls_files

log = logging.getLogger("dirt.web")

START_TIMEOUT = 60.0
RESTARTS_PER_MINUTE = 5


class _Worker:
    """One web process and the pipes that tie it to this one."""

    def __init__(self, index: int, sock: socket.socket, settings: Settings, host: str) -> None:
        self.index = index
        life_read, life_write = os.pipe()
        self._life_write: int | None = life_write
        ready_read, ready_write = os.pipe()
        settings_read, settings_write = os.pipe()
        fds = (sock.fileno(), life_read, ready_write, settings_read)
        command = [
            sys.executable,
            "-m",
            "dirt.web.child",
            f"--socket-fd={fds[0]}",
            f"--lifeline-fd={fds[1]}",
            f"--ready-fd={fds[2]}",
            f"--settings-fd={fds[3]}",
            f"--host={host}",
            f"--index={index}",
        ]
        try:
            # A new session: Ctrl-C in a terminal reaches this process only, which stops the
            # dispatcher first and then its web processes (which end their streams).
            self.process = subprocess.Popen(command, pass_fds=fds, start_new_session=True)
        finally:
            for fd in (life_read, ready_write, settings_read):
                os.close(fd)
        with os.fdopen(settings_write, "wb") as pipe:
            pickle.dump(settings, pipe)
        self._ready = ready_read
        self.started = time.monotonic()

    def wait_ready(self, timeout: float) -> bool:
        """True once the process serves; False when it died or did not start in time."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                readable, _, _ = select.select([self._ready], [], [], 0.2)
                if readable:
                    return os.read(self._ready, 16).startswith(b"ready")
                if self.process.poll() is not None:
                    return False
            return False
        finally:
            os.close(self._ready)

    def alive(self) -> bool:
        return self.process.poll() is None

    def cut_lifeline(self) -> None:
        """The process sees its lifeline close and stops."""
        if self._life_write is not None:
            with contextlib.suppress(OSError):
                os.close(self._life_write)
            self._life_write = None

    def stop(self, timeout: float) -> None:
        self.cut_lifeline()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("web process %d did not stop in %.0f s; killed", self.process.pid, timeout)
            self.process.kill()
            self.process.wait()


class WebWorkers:
    """`[web] workers` web processes serving one socket; `start` returns the URL."""

    def __init__(
        self,
        settings: Settings,
        host: str,
        port: int,
        *,
        fallback_port: bool = False,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.fallback_port = fallback_port
        self.url = ""
        self._sock: socket.socket | None = None
        self._workers: list[_Worker] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._restarts: list[float] = []
        self._monitor: threading.Thread | None = None

    def start(self) -> str:
        https = tls_files(self.settings.web, self.settings.project_dir) is not None
        self._sock = listen(self.host, self.port, fallback_port=self.fallback_port)
        self.port = self._sock.getsockname()[1]
        count = self.settings.web.workers
        with self._lock:
            self._workers = [self._spawn(i) for i in range(count)]
        failed = [w for w in self._workers if not w.wait_ready(START_TIMEOUT)]
        if failed:
            self.stop()
            raise ConfigError(
                f"the web server on {self.host}:{self.port} did not start (see the log above)"
            )
        self.url = display_url(self.host, self.port, https=https)
        self._monitor = threading.Thread(target=self._watch, name="dirt-web-watch", daemon=True)
        self._monitor.start()
        return self.url

    def _spawn(self, index: int) -> _Worker:
        assert self._sock is not None
        return _Worker(index, self._sock, self.settings, self.host)

    def _watch(self) -> None:
        """Start again a web process that died on its own, a few times a minute at most."""
        while not self._stopping.wait(0.5):
            with self._lock:
                for slot, worker in enumerate(self._workers):
                    if worker.alive() or self._stopping.is_set():
                        continue
                    now = time.monotonic()
                    self._restarts = [t for t in self._restarts if now - t < 60]
                    code = worker.process.returncode
                    if len(self._restarts) >= RESTARTS_PER_MINUTE:
                        log.error(
                            "web process %d exited (%s); restarted %d times this minute, not "
                            "again: the dispatcher goes on without the web server",
                            worker.process.pid,
                            code,
                            len(self._restarts),
                        )
                        self._stopping.set()
                        return
                    log.warning(
                        "web process %d exited (%s); starting another", worker.process.pid, code
                    )
                    self._restarts.append(now)
                    worker.stop(1)
                    self._workers[slot] = self._spawn(worker.index)

    @property
    def serving(self) -> bool:
        """False once stopped, or once a web process died too often to be started again."""
        return not self._stopping.is_set()

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers]

    def stop(self, timeout: float = 10) -> None:
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(5)
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:  # all are told first, then waited for: they stop side by side
            worker.cut_lifeline()
        for worker in workers:
            worker.stop(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
