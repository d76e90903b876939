"""GitHub and GitLab push webhooks: verified before anything is read, then taken apart."""

from __future__ import annotations

import json

import pytest

from dirt.sources.push import Ignored, Push, SourceError
from dirt.sources.webhooks import check_github_signature, github_push, github_signature, gitlab_push
from tests.sources.forge_payloads import (
    HEAD,
    SECRET,
    github_payload,
    gitlab_headers,
    gitlab_payload,
    signed,
)


def test_githubs_published_test_vector() -> None:
    assert (
        github_signature(SECRET, b"Hello, World!")
        == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_the_published_signature_verifies() -> None:
    headers = {
        "x-hub-signature-256": (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        )
    }
    check_github_signature(headers, b"Hello, World!", SECRET)


def test_a_github_push_becomes_the_head_commit_on_its_ref() -> None:
    body = json.dumps(github_payload()).encode()
    push = github_push(signed(body), body, SECRET)
    assert isinstance(push, Push)
    assert (push.source, push.repository, push.delivery, push.project) == (
        "github",
        "https://github.com/octo/hello.git",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "octo/hello",
    )
    [update] = push.updates
    assert (update.ref, update.before) == (
        "refs/heads/main",
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
    )
    assert (update.head.sha, update.head.subject) == (HEAD, "Add the frobnicator")
    assert update.head.url == f"https://github.com/octo/hello/commit/{HEAD}"
    assert update.head.author == "Mona <mona@example.org>"


def test_a_github_commit_message_gives_its_first_line_as_subject() -> None:
    body = json.dumps(github_payload()).encode()
    push = github_push(signed(body), body, SECRET)
    assert isinstance(push, Push)
    assert [c.subject for c in push.updates[0].commits] == ["Fix the build", "Add the frobnicator"]


def test_a_forged_github_signature_is_a_401() -> None:
    body = json.dumps(github_payload()).encode()
    with pytest.raises(SourceError, match="does not match") as info:
        github_push(signed(body, secret="guess"), body, SECRET)
    assert info.value.status == 401


def test_a_github_body_changed_after_signing_is_a_401() -> None:
    body = json.dumps(github_payload()).encode()
    headers = signed(body)
    with pytest.raises(SourceError) as info:
        github_push(headers, body.replace(b"main", b"evil"), SECRET)
    assert info.value.status == 401


def test_a_missing_github_signature_is_a_401() -> None:
    body = json.dumps(github_payload()).encode()
    headers = {k: v for k, v in signed(body).items() if k != "X-Hub-Signature-256"}
    with pytest.raises(SourceError, match="missing") as info:
        github_push(headers, body, SECRET)
    assert info.value.status == 401


def test_without_a_configured_secret_github_is_refused() -> None:
    body = json.dumps(github_payload()).encode()
    with pytest.raises(SourceError, match="github_secret_env") as info:
        github_push(signed(body), body, None)
    assert info.value.status == 403


def test_a_signed_github_body_that_is_not_json_is_a_400() -> None:
    with pytest.raises(SourceError, match="not JSON") as info:
        github_push(signed(b"<xml/>"), b"<xml/>", SECRET)
    assert info.value.status == 400


def test_a_github_push_without_its_fields_lists_what_is_missing() -> None:
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    with pytest.raises(SourceError) as info:
        github_push(signed(body), body, SECRET)
    assert "'after'" in str(info.value) and "'repository.clone_url'" in str(info.value)
    assert info.value.status == 400


def test_a_deleted_github_branch_is_ignored() -> None:
    body = json.dumps(
        github_payload(deleted=True, after="0" * 40, head_commit=None, commits=[])
    ).encode()
    found = github_push(signed(body), body, SECRET)
    assert isinstance(found, Ignored) and "deleted" in found.reason


def test_a_github_ping_is_ignored_politely() -> None:
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    found = github_push(signed(body, event="ping"), body, SECRET)
    assert isinstance(found, Ignored) and found.reason.startswith("ping")


def test_other_github_events_are_ignored() -> None:
    body = json.dumps({"action": "opened"}).encode()
    found = github_push(signed(body, event="issues"), body, SECRET)
    assert isinstance(found, Ignored) and "issues events make no records" in found.reason


def test_a_gitlab_push_becomes_the_checkout_commit_on_its_ref() -> None:
    body = json.dumps(gitlab_payload()).encode()
    push = gitlab_push(gitlab_headers(), body, SECRET)
    assert isinstance(push, Push)
    assert (push.source, push.repository, push.project) == (
        "gitlab",
        "http://example.com/mike/diaspora.git",
        "mike/diaspora",
    )
    [update] = push.updates
    assert (update.ref, update.head.sha) == ("refs/heads/master", HEAD)
    assert update.head.subject == "Update Catalan translation to e38cb41."
    assert update.head.url == f"http://example.com/mike/diaspora/commit/{HEAD}"
    assert update.head.author == "Jordi Mallach <jordi@softcatala.org>"


def test_a_gitlab_retry_keeps_its_idempotency_key_as_the_delivery_id() -> None:
    body = json.dumps(gitlab_payload()).encode()
    push = gitlab_push(gitlab_headers(), body, SECRET)
    assert push.delivery == "f3c5e5b0-6a7b-4e7c-9d1e-0a1b2c3d4e5f"


def test_an_older_gitlab_is_deduplicated_by_its_event_uuid() -> None:
    body = json.dumps(gitlab_payload()).encode()
    headers = {k: v for k, v in gitlab_headers().items() if k != "Idempotency-Key"}
    assert gitlab_push(headers, body, SECRET).delivery == "13792a34-cac6-4fda-95a8-c58e00a3954e"


def test_a_wrong_gitlab_token_is_a_401() -> None:
    body = json.dumps(gitlab_payload()).encode()
    with pytest.raises(SourceError, match="not the configured secret") as info:
        gitlab_push(gitlab_headers(token="guess"), body, SECRET)
    assert info.value.status == 401


def test_a_missing_gitlab_token_is_a_401() -> None:
    body = json.dumps(gitlab_payload()).encode()
    headers = {k: v for k, v in gitlab_headers().items() if k != "X-Gitlab-Token"}
    with pytest.raises(SourceError, match="missing") as info:
        gitlab_push(headers, body, SECRET)
    assert info.value.status == 401


def test_without_a_configured_secret_gitlab_is_refused() -> None:
    body = json.dumps(gitlab_payload()).encode()
    with pytest.raises(SourceError, match="gitlab_secret_env") as info:
        gitlab_push(gitlab_headers(), body, "")
    assert info.value.status == 403


def test_a_gitlab_body_that_is_not_json_is_a_400() -> None:
    with pytest.raises(SourceError) as info:
        gitlab_push(gitlab_headers(), b"not json", SECRET)
    assert info.value.status == 400


def test_a_deleted_gitlab_branch_is_ignored() -> None:
    body = json.dumps(gitlab_payload(after="0" * 40, checkout_sha=None, commits=[])).encode()
    found = gitlab_push(gitlab_headers(), body, SECRET)
    assert isinstance(found, Ignored) and "deleted" in found.reason


def test_a_gitlab_push_listing_fewer_commits_than_it_had_is_marked_truncated() -> None:
    body = json.dumps(gitlab_payload(total_commits_count=45)).encode()
    push = gitlab_push(gitlab_headers(), body, SECRET)
    assert isinstance(push, Push) and push.updates[0].truncated


def test_a_gitlab_tag_push_is_taken() -> None:
    body = json.dumps(
        gitlab_payload(object_kind="tag_push", ref="refs/tags/v1.0", commits=[], message="v1")
    ).encode()
    push = gitlab_push(gitlab_headers(event="Tag Push Hook"), body, SECRET)
    assert isinstance(push, Push)
    assert (push.updates[0].ref, push.updates[0].head.sha) == ("refs/tags/v1.0", HEAD)


def test_other_gitlab_events_are_ignored() -> None:
    body = json.dumps({"object_kind": "issue"}).encode()
    found = gitlab_push(gitlab_headers(event="Issue Hook"), body, SECRET)
    assert isinstance(found, Ignored)
