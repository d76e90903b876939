"""Forge push webhooks, verified: GitHub (`POST /hooks/github`) and GitLab (`POST /hooks/gitlab`).

Pure functions of (headers, raw body, secret): a verified `Push`, an `Ignored` delivery (a
ping, another event, a deleted branch), or `SourceError` with the HTTP status to answer:
403 while no secret is configured, 401 for a missing or wrong signature or token, 400 for a
body that is not a push event in JSON. The secret is checked before the body is parsed, and
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dirt.sources.push import ZERO_SHA, Commit, Ignored, Push, SourceError, Update

GITHUB_MAX_COMMITS = 2048  # GitHub lists at most this many commits in a push event


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value whatever the case of its name (a plain dict or Starlette's Headers)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, found in headers.items():
        if key.lower() == lowered:
            return found
    return None


def github_signature(secret: str, body: bytes) -> str:
    """`X-Hub-Signature-256` of `body`: "sha256=" and the hex HMAC-SHA256 with `secret`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _no_secret(forge: str, setting: str) -> SourceError:
    return SourceError(
        403,
        f"{forge} webhooks are refused: no secret is configured (set [hooks] {setting} "
        "to the name of an environment variable holding the webhook's secret)",
    )


def check_github_signature(headers: Mapping[str, str], body: bytes, secret: str | None) -> None:
    """Return when `X-Hub-Signature-256` is the body's HMAC with `secret`; else SourceError."""
    if not secret:
        raise _no_secret("GitHub", "github_secret_env")
    given = header(headers, "X-Hub-Signature-256")
    if not given:
        raise SourceError(401, "X-Hub-Signature-256 is missing: set the webhook's secret")
    if not hmac.compare_digest(given.strip().encode(), github_signature(secret, body).encode()):
        raise SourceError(401, "X-Hub-Signature-256 does not match the body and the secret")


def check_gitlab_token(headers: Mapping[str, str], secret: str | None) -> None:
    """Return when `X-Gitlab-Token` is the secret; else SourceError."""
    if not secret:
        raise _no_secret("GitLab", "gitlab_secret_env")
    given = header(headers, "X-Gitlab-Token")
    if not given:
        raise SourceError(401, "X-Gitlab-Token is missing: set the webhook's secret token")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise SourceError(401, "X-Gitlab-Token is not the configured secret")


def _json_object(body: bytes, forge: str) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(400, f"the {forge} payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise SourceError(400, f"the {forge} payload must be a JSON object")
    return payload


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _person(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    name, email = value.get("name") or "", value.get("email") or ""
    return f"{name} <{email}>" if email else str(name)


def _commit(item: Any, where: str, problems: list[str]) -> Commit | None:
    """A GitHub or GitLab commit object (`id`, `message`, `timestamp`, `url`, `author`)."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        problems.append(f"{where} must be an object with a string 'id'")
        return None
    message = item.get("message")
    subject = item.get("title") or (message.split("\n", 1)[0] if isinstance(message, str) else "")
    url = item.get("url")
    return Commit(
        sha=item["id"],
        subject=str(subject),
        author=_person(item.get("author")),
        timestamp=_epoch(item.get("timestamp")),
        url=url if isinstance(url, str) and url else None,
    )


def _commits(value: Any, problems: list[str]) -> list[Commit]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append("'commits' must be a list")
        return []
    return [c for i, item in enumerate(value) if (c := _commit(item, f"commits[{i}]", problems))]


def _string(payload: dict[str, Any], path: str, problems: list[str]) -> str:
    value: Any = payload
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        problems.append(f"'{path}' must be a non-empty string")
        return ""
    return value


def _bad_request(forge: str, problems: list[str]) -> SourceError:
    return SourceError(400, f"the {forge} push event is malformed: " + "; ".join(problems))


def github_push(headers: Mapping[str, str], body: bytes, secret: str | None) -> Push | Ignored:
    """A verified GitHub push event, an Ignored delivery, or SourceError."""
    check_github_signature(headers, body, secret)
    delivery = header(headers, "X-GitHub-Delivery")
    event = header(headers, "X-GitHub-Event") or "push"
    payload = _json_object(body, "GitHub")
    if event == "ping":
        return Ignored("ping: the webhook reaches dirt", delivery)
    if event != "push":
        return Ignored(f"{event} events make no records (send push events only)", delivery)
    if payload.get("deleted") is True:
        return Ignored(f"{payload.get('ref')} was deleted", delivery)
    problems: list[str] = []
    ref = _string(payload, "ref", problems)
    after = _string(payload, "after", problems)
    repository = _string(payload, "repository.clone_url", problems)
    commits = _commits(payload.get("commits"), problems)
    head_doc = payload.get("head_commit")
    head = _commit(head_doc, "head_commit", problems) if head_doc is not None else None
    if problems:
        raise _bad_request("GitHub", problems)
    before = payload.get("before")
    update = Update(
        ref=ref,
        before=before if isinstance(before, str) and before != ZERO_SHA else None,
        head=head or Commit(sha=after, subject=""),
        commits=tuple(commits),
        truncated=len(commits) >= GITHUB_MAX_COMMITS,
    )
    full_name = (payload.get("repository") or {}).get("full_name")
    return Push(
        "github",
        repository,
        (update,),
        delivery,
        pusher=_person(payload.get("pusher")),
        project=full_name if isinstance(full_name, str) else None,
    )


def gitlab_push(headers: Mapping[str, str], body: bytes, secret: str | None) -> Push | Ignored:
    """A verified GitLab push or tag push event, an Ignored delivery, or SourceError."""
    check_gitlab_token(headers, secret)
    # Idempotency-Key stays the same when GitLab retries a delivery; older GitLabs send only
    # the event's UUID.
    delivery = header(headers, "Idempotency-Key") or header(headers, "X-Gitlab-Event-UUID")
    event = header(headers, "X-Gitlab-Event") or "Push Hook"
    payload = _json_object(body, "GitLab")
    if event not in ("Push Hook", "Tag Push Hook") or payload.get("object_kind") not in (
        "push",
        "tag_push",
    ):
        return Ignored(f"{event} events make no records (send push events only)", delivery)
    checkout = payload.get("checkout_sha")
    if not checkout or payload.get("after") == ZERO_SHA:
        return Ignored(f"{payload.get('ref')} was deleted", delivery)
    problems: list[str] = []
    ref = _string(payload, "ref", problems)
    repository = _string(payload, "project.git_http_url", problems)
    commits = _commits(payload.get("commits"), problems)
    if not isinstance(checkout, str):
        problems.append("'checkout_sha' must be a string")
    if problems:
        raise _bad_request("GitLab", problems)
    head = next((c for c in commits if c.sha == checkout), None)
    total = payload.get("total_commits_count")
    before = payload.get("before")
    update = Update(
        ref=ref,
        before=before if isinstance(before, str) and before != ZERO_SHA else None,
        head=head or Commit(sha=str(checkout), subject=str(payload.get("message") or "")),
        commits=tuple(commits),
        truncated=isinstance(total, int) and total > len(commits),
    )
    project = (payload.get("project") or {}).get("path_with_namespace")
    return Push(
        "gitlab",
        repository,
        (update,),
        delivery,
        pusher=str(payload.get("user_name") or ""),
        project=project if isinstance(project, str) else None,
    )
