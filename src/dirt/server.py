"""`dirt serve`: the dispatcher (and the web server, when there is one) in one process."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from dirt.dispatch.loop import Dispatcher
from dirt.service import Service

log = logging.getLogger("dirt")


def serve(service: Service, on_ready: Callable[[Dispatcher], None] | None = None) -> int:
    """Run until SIGINT or SIGTERM; running tasks go back to waiting. Returns the exit code."""
    dispatcher = Dispatcher(service)

    def stop(signum: int, _frame: object) -> None:
        log.info(
            "%s received: taking no new tasks, returning running ones to waiting",
            signal.Signals(signum).name,
        )
        dispatcher.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
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
    dispatcher.run()
    log.info("dispatcher stopped")
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password, for log lines."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
