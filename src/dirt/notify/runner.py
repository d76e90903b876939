"""The notification work of `dirt serve`: the sender on its own thread, and a daily purge.

The sender claims rows under the server's master id, so a row is in the hands of one server at
a time; rows a sender on this host held when its process died are due again at start (rows of
a server that stopped cleanly were given back when it stopped). Sent rows and webhook delivery
ids are kept `keep` seconds (30 days), then purged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from dirt.ci_config import missing_secrets
from dirt.config import Settings
from dirt.notify.sender import Sender, channels_from_settings, policy_from_settings

if TYPE_CHECKING:
    from dirt.service import Service

log = logging.getLogger("dirt.notify")

KEEP = 30 * 24 * 3600.0
PURGE_EVERY = 24 * 3600.0


def warn_missing_secrets(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Log a warning per secret variable dirt.toml names that this server's environment lacks."""
    missing = missing_secrets(settings, environ)
    for line in missing:
        log.warning("%s: set it in the server's environment (until then that part waits)", line)
    return missing


class NotificationRunner:
    def __init__(
        self,
        service: Service,
        environ: Mapping[str, str] | None = None,
        *,
        keep: float = KEEP,
        purge_every: float = PURGE_EVERY,
    ) -> None:
        self.service = service
        self.environ = os.environ if environ is None else environ
        self.keep = keep
        self.purge_every = purge_every
        self.sender: Sender | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        notify = self.service.settings.notify
        channels = channels_from_settings(notify, self.environ)
        if channels:
            self.service.release_dead_claims(time.time())
            self.sender = Sender(
                self.service.outbox_store(),
                channels,
                policy_from_settings(notify),
                owner=self.service.master_id,
            )
            self.service.add_outbox_listener(self.sender.wake)
            self._spawn("dirt-notify", self.sender.run, self._stop)
            log.info("notifications on: %s", ", ".join(sorted(channels)))
        else:
            waiting = self.service.notification_counts()
            pending = waiting["pending"] + waiting["sending"]
            if pending:
                log.warning(
                    "%d notification(s) wait, but no [notify.*] channel is configured: they are "
                    "sent once one is (see `dirt notify list`)",
                    pending,
                )
        self._spawn("dirt-outbox-purge", self._purge_loop)

    def _spawn(self, name: str, target: Callable[..., object], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _purge_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.service.purge_outbox(time.time() - self.keep)
            except Exception:  # the store is away for a moment: try again at the next round
                log.exception("outbox purge failed")
            self._stop.wait(self.purge_every)

    def stop(self, timeout: float = 30) -> None:
        """Stop sending: sends under way finish, claimed rows not sent are given back."""
        self._stop.set()
        if self.sender is not None:
            self.sender.wake()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s did not stop within %.0f s", thread.name, timeout)
