"""`dirt serve`: the dispatcher and the web server in one process; `dirt web`: the web alone."""

from __future__ import annotations

import logging
import signal
import threading
import tomllib
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from dirt.config import CONFIG_FILE, NotifySettings, Settings
from dirt.dispatch.loop import Dispatcher
from dirt.service import Service

log = logging.getLogger("dirt")


def _on_signals(handler: Callable[[int, Any], None]) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def notify_keys(settings: Settings) -> list[str]:
    """The [notify] keys set in dirt.toml, the environment (DIRT_NOTIFY_*) or by a caller."""
    try:
        data = tomllib.loads((settings.project_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        in_file = data.get("notify")
    except (OSError, tomllib.TOMLDecodeError):  # load_settings read it; it changed since
        in_file = None
    given = set(in_file) if isinstance(in_file, dict) else set()
    defaults = NotifySettings()
    given |= {
        f.name
        for f in fields(NotifySettings)
        if getattr(settings.notify, f.name) != getattr(defaults, f.name)
    }
    return sorted(given)


def warn_unimplemented(settings: Settings) -> None:
    """Say so when dirt.toml asks for what this version does not do (rather than stay silent)."""
    keys = notify_keys(settings)
    if keys:
        log.warning(
            "[notify] %s: notifications are not implemented yet; no email or message is sent "
            "(the settings are read and ignored)",
            ", ".join(keys),
        )


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
    """Run until SIGINT or SIGTERM. Returns the exit code.

    The first signal drains: no new tasks, reserved ones go back to every dispatcher, each node
    is handed over as soon as nothing runs there, running tasks may finish for `[dispatch]
    stop_grace` seconds, and what still runs then goes back to waiting. A second signal ends
    the wait at once.

    With `web`, the web server runs on a thread of this process, sharing the service, so the
    pages hear of the dispatcher's writes at once.
    """
    warn_unimplemented(service.settings)
    dispatcher = Dispatcher(service)
    web_server = _start_web(service, host, port, fallback_port) if web else None
    if web_server is not None and on_web is not None:
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

    web_server = _start_web(service, host, port, fallback_port=False)
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
