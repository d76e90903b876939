"""A forge delivery's path on a real store: verify (`github_push`), then `Service.take_push`:
refuse a replay, make documents, store only what is new, in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from dirt.service import Service
from dirt.sources.push import Push, SourceError
from dirt.sources.webhooks import github_push, github_signature
from tests.sources.forge_payloads import SECRET, github_payload, signed


@pytest.fixture
def ci_task(add_task_module: Callable[[str, str], str]) -> None:
    add_task_module("ci.test", "def execute(**kwargs):\n    return {'success': True}\n")


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    return {"log": {"file": ""}, "ci": {"tasks": ["ci.test"]}}


def deliver(service: Service, headers: dict[str, str], body: bytes) -> int:
    """What POST /hooks/github does; returns the number of records stored."""
    push = github_push(headers, body, SECRET)
    assert isinstance(push, Push)
    return len(service.take_push(push).records)


def test_a_push_makes_a_record_with_the_forge_fields(service: Service, ci_task: None) -> None:
    body = json.dumps(github_payload()).encode()
    assert deliver(service, signed(body), body) == 1
    record = service.record(github_payload()["after"])
    assert record.description == "Add the frobnicator"
    assert record.extra["changeset_url"].endswith(github_payload()["after"])
    assert record.extra["repository"] == "https://github.com/octo/hello.git"


def test_a_replayed_delivery_makes_nothing(service: Service, ci_task: None) -> None:
    body = json.dumps(github_payload()).encode()
    deliver(service, signed(body), body)
    assert deliver(service, signed(body), body) == 0


def test_the_same_commit_in_a_new_delivery_is_still_one_record(
    service: Service, ci_task: None
) -> None:
    body = json.dumps(github_payload()).encode()
    deliver(service, signed(body), body)
    again = {**signed(body), "X-GitHub-Delivery": "another-delivery"}
    assert deliver(service, again, body) == 0
    assert len(service.record_detail(github_payload()["after"]).tasks) == 1


def test_a_forged_delivery_stores_nothing(service: Service, ci_task: None) -> None:
    body = json.dumps(github_payload()).encode()
    forged = {**signed(body), "X-Hub-Signature-256": github_signature("guess", body)}
    with pytest.raises(SourceError):
        deliver(service, forged, body)
    assert service.record_page(10) == []
