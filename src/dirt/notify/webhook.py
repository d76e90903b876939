"""Generic webhooks: a JSON POST per event, signed like GitHub signs its own.

Headers: ``X-Dirt-Event`` (record.finished, task.finished, test), ``X-Dirt-Delivery`` (one id
per notification, the same on every retry, so a receiver can drop repeats) and, when the
webhook has a secret, ``X-Dirt-Signature-256: sha256=<hex HMAC-SHA256 of the body>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping

from dirt.ci_config import WebhookSettings
from dirt.db.outbox import Notification
from dirt.notify.base import PermanentFailure, TemporaryFailure
from dirt.notify.http import request_json


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookChannel:
    """Every `[[notify.webhook]]`, told apart by URL (a row's `target`)."""

    name = "webhook"

    def __init__(self, hooks: list[WebhookSettings], environ: Mapping[str, str]) -> None:
        self.hooks = {h.url: h for h in hooks}
        self.environ = environ

    def send(self, notification: Notification) -> None:
        hook = self.hooks.get(notification.target)
        if hook is None:
            raise PermanentFailure(
                f"no [[notify.webhook]] has url {notification.target!r} any more"
            )
        payload = notification.payload
        body = json.dumps(payload["body"], separators=(",", ":"), sort_keys=True).encode()
        headers = {"X-Dirt-Event": payload["event"], "X-Dirt-Delivery": payload["delivery"]}
        if hook.secret_env:
            secret = self.environ.get(hook.secret_env, "")
            if not secret:
                raise TemporaryFailure(
                    f"webhook {hook.url}: ${hook.secret_env} is not set for the server"
                )
            headers["X-Dirt-Signature-256"] = signature(secret, body)
        request_json("POST", hook.url, body, headers, hook.timeout)
