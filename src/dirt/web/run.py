"""Run the web app under uvicorn on a thread, next to the dispatcher or alone."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

import uvicorn

from dirt.errors import ConfigError

log = logging.getLogger("dirt.web")


def _listen(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def display_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


class WebServer:
    """uvicorn on a thread; `start` returns once it accepts connections."""

    def __init__(self, app: Any, host: str, port: int, *, fallback_port: bool = False) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.fallback_port = fallback_port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""

    def start(self, timeout: float = 20) -> str:
        try:
            sock = _listen(self.host, self.port)
        except OSError as exc:
            if not self.fallback_port:
                raise ConfigError(
                    f"the web server cannot listen on {self.host}:{self.port}: {exc.strerror}; "
                    "choose another with --port (or [web] port), or run without it: --no-web"
                ) from None
            log.warning("port %d is taken (%s); using a free one", self.port, exc.strerror)
            sock = _listen(self.host, 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="none",
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, args=(sock,), name="dirt-web", daemon=True)
        self.thread.start()
        started = threading.Event()

        def watch() -> bool:
            return self.server is not None and self.server.started

        for _ in range(int(timeout / 0.02)):
            if watch() or not self.thread.is_alive():
                break
            started.wait(0.02)
        if not watch():
            self.stop()
            raise ConfigError(f"the web server on {self.host}:{self.port} did not start")
        self.url = display_url(self.host, self.port)
        log.info("web server at %s", self.url)
        return self.url

    def _run(self, sock: socket.socket) -> None:
        assert self.server is not None
        try:
            self.server.run(sockets=[sock])
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self, timeout: float = 10) -> None:
        if self.server is not None:
            hub = getattr(getattr(self.app, "state", None), "hub", None)
            if hub is not None:
                hub.stop()  # ends open event streams, so shutdown need not wait for them
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                log.warning("web server did not stop within %.0f s", timeout)
