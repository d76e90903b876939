"""`dirt serve`: the dispatcher, with the web server in processes of its own; `dirt web`: the
web server alone."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dirt.config import Settings
from dirt.dispatch.loop import Dispatcher
from dirt.notify.runner import NotificationRunner, warn_missing_secrets
from dirt.service import Service

if TYPE_CHECKING:
    from dirt.web.run import WebServer
    from dirt.web.workers import WebWorkers

log = logging.getLogger("dirt")


def _on_signals(handler: Callable[[int, Any], None]) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def _web_address(service: Service, host: str | None, port: int | None) -> tuple[str, int]:
    return host or service.settings.web.host, service.settings.web.port if port is None else port


def _say_mode(settings: Settings, host: str) -> None:
    """Say at start whether reads need a token here, and why (loudly when they are open to
    more than this machine)."""
    from dirt.web.auth import is_loopback, read_mode

    behind_proxy = bool(settings.web.forwarded_allow_ips)
    mode = read_mode(settings.auth.read, host, behind_proxy)
    exposed = mode.open and (behind_proxy or not is_loopback(host))
    log.log(logging.WARNING if exposed else logging.INFO, "web: %s", mode.why)


def _start_web(
    service: Service, host: str | None, port: int | None, fallback_port: bool
) -> WebWorkers:
    from dirt.web.workers import WebWorkers

    host, port = _web_address(service, host, port)
    settings = service.settings
    workers = WebWorkers(settings, host, port, fallback_port=fallback_port)
    url = workers.start()
    log.info(
        "web server at %s (%d web process(es): %s)",
        url,
        len(workers.pids),
        ", ".join(map(str, workers.pids)),
    )
    _say_mode(settings, host)
    return workers


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
    """Run until SIGINT or SIGTERM. Returns the exit code.

    The first signal drains: no new tasks, reserved ones go back to every dispatcher, each node
    is handed over as soon as nothing runs there, running tasks may finish for `[dispatch]
    stop_grace` seconds, and what still runs then goes back to waiting. A second signal ends
    the wait at once.

    With `web`, the web server runs in processes of its own (`[web] workers`, see
    dirt.web.workers): readers and the dispatcher never wait for one GIL. They hear of the
    dispatcher's writes through the change sequence, within a tenth of a second. The
    notification sender runs on a thread of this process: it stops after the dispatcher, so
    what the last tasks made still goes out (or stays pending for the next start).
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

    signals = 0

    def stop(signum: int, _frame: object) -> None:
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        grace = service.settings.dispatch.stop_grace
        if signals == 1 and grace > 0:
            log.info(
                "%s received: stopping; no new tasks, %d running task(s) may finish within "
                "%g s, then the rest go back to waiting (send it again to stop now)",
                name,
                dispatcher.slots.running_total(),
                grace,
            )
            dispatcher.stop(grace)
        else:
            log.info("%s received: stopping now, running tasks go back to waiting", name)
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
    """The web server alone (another process dispatches), until SIGINT or SIGTERM: in this
    process, or in `[web] workers` processes when that is more than one."""
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("%s received: stopping the web server", signal.Signals(signum).name)
        stopping.set()

    warn_missing_secrets(service.settings, os.environ)
    web: WebServer | WebWorkers
    if service.settings.web.workers > 1:
        web = _start_web(service, host, port, fallback_port=False)
    else:
        from dirt.web.app import create_app
        from dirt.web.run import WebServer

        bind, port = _web_address(service, host, port)
        web = WebServer(create_app(service, bind_host=bind), bind, port)
        log.info("web server at %s", web.start())
        _say_mode(service.settings, bind)
    service.serving_at(web.url)
    _on_signals(stop)
    if on_web is not None:
        on_web(web.url)
    try:
        while not stopping.wait(0.5):
            if not web.serving:
                log.error("the web server stopped on its own")
                return 1
    finally:
        web.stop()
    log.info("web server stopped")
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password, for log lines."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
