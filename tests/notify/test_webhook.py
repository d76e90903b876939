"""Generic webhooks: a signed JSON POST with a delivery id, checked on a loopback server."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from dirt.ci_config import WebhookSettings
from dirt.db.outbox import Notification
from dirt.notify.base import PermanentFailure
from dirt.notify.webhook import WebhookChannel
from tests.httpstub import HttpStub


def row(url: str) -> Notification:
    payload = {
        "event": "record.finished",
        "delivery": "d-1",
        "body": {"event": "record.finished", "delivery": "d-1", "outcome": "failed"},
    }
    return Notification(3, "record.finished", "webhook", payload, "sending", 1, 0.0, 0.0, url)


def test_a_webhook_is_a_signed_json_post(stub: HttpStub) -> None:
    url = f"{stub.url}/dirt-events"
    hook = WebhookSettings(url=url, secret_env="HOOK_SECRET")
    WebhookChannel([hook], {"HOOK_SECRET": "s3cret"}).send(row(url))
    [request] = stub.wait_for(1)
    assert (request.method, request.path) == ("POST", "/dirt-events")
    expected = hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-dirt-signature-256"] == f"sha256={expected}"
    assert request.headers["x-dirt-event"] == "record.finished"
    assert request.headers["x-dirt-delivery"] == "d-1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body)["outcome"] == "failed"


def test_a_webhook_without_a_secret_is_sent_unsigned(stub: HttpStub) -> None:
    url = f"{stub.url}/x"
    WebhookChannel([WebhookSettings(url=url)], {}).send(row(url))
    assert "x-dirt-signature-256" not in stub.wait_for(1)[0].headers


def test_a_webhook_no_longer_configured_is_final(stub: HttpStub) -> None:
    with pytest.raises(PermanentFailure, match=r"no \[\[notify.webhook\]\] has url"):
        WebhookChannel([], {}).send(row(f"{stub.url}/gone"))
