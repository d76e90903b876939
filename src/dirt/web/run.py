"""Run the web app under uvicorn on a thread: the listening socket, TLS, forwarded headers.

`dirt serve` runs this in web processes of its own (`dirt.web.workers`), so the dispatcher and
the web server never share a GIL; `dirt web` and the tests run it in their own process.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import uvicorn

from dirt.config import Settings, WebSettings
from dirt.errors import ConfigError

log = logging.getLogger("dirt.web")


def _listen(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def listen(host: str, port: int, *, fallback_port: bool = False) -> socket.socket:
    """A listening socket on host:port (a free port when taken and `fallback_port`)."""
    try:
        return _listen(host, port)
    except OSError as exc:
        if not fallback_port:
            raise ConfigError(
                f"the web server cannot listen on {host}:{port}: {exc.strerror}; "
                "choose another with --port (or [web] port), or run without it: --no-web"
            ) from None
        log.warning("port %d is taken (%s); using a free one", port, exc.strerror)
        return _listen(host, 0)


def tls_files(web: WebSettings, base: Path) -> tuple[str, str] | None:
    """(certfile, keyfile) when HTTPS is asked for, checked by loading them; None for HTTP.
    A relative path is relative to the project folder."""
    if not web.certfile and not web.keyfile:
        return None
    if not web.certfile or not web.keyfile:
        missing = "certfile" if not web.certfile else "keyfile"
        raise ConfigError(
            f"HTTPS needs both [web] certfile and keyfile (--certfile, --keyfile); {missing} "
            "is not set"
        )
    cert, key = (str(base / Path(p).expanduser()) for p in (web.certfile, web.keyfile))
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"HTTPS: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"HTTPS: cannot use certificate {cert} with key {key}: {exc}; both must be PEM "
            "files, the key unencrypted and matching the certificate"
        ) from None
    return cert, key


def display_url(host: str, port: int, https: bool = False) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if https else 'http'}://{host}:{port}/"


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """How dirt runs uvicorn: HTTPS when [web] certfile/keyfile are set; X-Forwarded-* believed
    only from [web] forwarded_allow_ips (never by default: uvicorn's own default would believe
    any process on this machine)."""
    tls = tls_files(settings.web, settings.project_dir)
    proxies = settings.web.forwarded_allow_ips
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws="none",
        http="httptools",
        loop="asyncio",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=5,
        backlog=1024,
        proxy_headers=bool(proxies),
        forwarded_allow_ips=list(proxies) if proxies else [],
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )


class WebServer:
    """uvicorn on a thread; `start` returns once it accepts connections.

    `sock`: an already listening socket (a web process of `dirt serve` inherits it), else the
    server listens on host:port itself.
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        fallback_port: bool = False,
        sock: socket.socket | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.fallback_port = fallback_port
        self.sock = sock
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""

    def start(self, timeout: float = 20) -> str:
        settings: Settings = self.app.state.settings
        config = uvicorn_config(self.app, settings)
        sock = self.sock or listen(self.host, self.port, fallback_port=self.fallback_port)
        self.port = sock.getsockname()[1]
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
        self.url = display_url(self.host, self.port, https=config.is_ssl)
        return self.url

    @property
    def serving(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

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
