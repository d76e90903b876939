"""`dirt serve`: the dispatcher and the web server in one process; `dirt web`: the web alone."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from dirt.dispatch.loop import Dispatcher
from dirt.notify.runner import NotificationRunner, warn_missing_secrets
from dirt.service import Service

log = logging.getLogger("dirt")


def _on_signals(handler: Callable[[int, Any], None]) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _start_web(service: Service, host: str | None, port: int | None, fallback_port: bool) -> Any:
    from dirt.web.app import create_app
    from dirt.web.run import WebServer

    host = host or service.settings.web.host
    port = service.settings.web.port if port is None else port
    server = WebServer(create_app(service, bind_host=host), host, port, fallback_port=fallback_port)
    server.start()
    return server


def serve(
    service: Service,
    on_ready: Callable[[Dispatcher], None] | None = None,
    *,
    web: bool = True,
    host: str | None = None,
    port: int | None = None,
    fallback_port: bool = False,
    on_web: Callable[[str], None] | None = None,
) -> int:
    """Run until SIGINT or SIGTERM; running tasks go back to waiting. Returns the exit code.

    With `web`, the web server runs on a thread of this process, sharing the service, so the
    pages hear of the dispatcher's writes at once. The notification sender runs on a thread
    too: it stops after the dispatcher, so what the last tasks made still goes out (or stays
    pending for the next start).
    """
    warn_missing_secrets(service.settings, os.environ)
    dispatcher = Dispatcher(service)
    notifications = NotificationRunner(service)
    notifications.start()
    web_server = _start_web(service, host, port, fallback_port) if web else None
    if web_server is not None:
        service.serving_at(web_server.url)
        if on_web is not None:
            on_web(web_server.url)

    def stop(signum: int, _frame: object) -> None:
        log.info(
            "%s received: taking no new tasks, returning running ones to waiting",
            signal.Signals(signum).name,
        )
        dispatcher.stop()

    _on_signals(stop)
    log.info(
        "dispatcher %s serving project %s (%s isolation, store %s)",
        service.master_id,
        service.settings.name,
        service.settings.dispatch.isolation,
        _safe_url(service.settings.database_url),
    )
    if on_ready is not None:
        threading.Thread(
            target=lambda: dispatcher.ready.wait() and on_ready(dispatcher),
            name="dirt-on-ready",
            daemon=True,
        ).start()
    try:
        dispatcher.run()
    finally:
        if web_server is not None:
            web_server.stop()
            log.info("web server stopped")
        notifications.stop()
    log.info("dispatcher stopped")
    return 0


def serve_web(
    service: Service,
    *,
    host: str | None = None,
    port: int | None = None,
    on_web: Callable[[str], None] | None = None,
) -> int:
    """The web server alone (another process dispatches), until SIGINT or SIGTERM."""
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("%s received: stopping the web server", signal.Signals(signum).name)
        stopping.set()

    warn_missing_secrets(service.settings, os.environ)
    web_server = _start_web(service, host, port, fallback_port=False)
    service.serving_at(web_server.url)
    _on_signals(stop)
    if on_web is not None:
        on_web(web_server.url)
    try:
        while not stopping.wait(0.5):
            if web_server.thread is not None and not web_server.thread.is_alive():
                log.error("the web server stopped on its own")
                return 1
    finally:
        web_server.stop()
    log.info("web server stopped")
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password, for log lines."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
