"""Change sources over HTTP: the post-receive hook and the forges' push webhooks.

- `POST /hooks/git`: what `dirt hook install` makes a repository send after each push (see
  `dirt.sources.hook`); a write like any other (an API token, or loopback on a loopback server).
- `POST /hooks/github`, `POST /hooks/gitlab`: push events, verified with the secret named by
  `[hooks] github_secret_env` / `gitlab_secret_env` (read from the server's environment at each
  delivery). While no secret is configured the endpoint refuses everything (403); a missing or
  wrong signature or token is 401.

The records are stored before the answer (`Service.take_push`, milliseconds), so 202 means
stored: a delivery is taken once however often it comes (a replay answers 202 and makes
nothing), refs outside `[ci] branches` are logged and left out, and a body that is not a push
dirt can read is 400 with every problem named. Nothing stored is touched by a refused delivery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dirt.errors import SubmissionError
from dirt.service import Taken
from dirt.sources.hook import parse_hook_payload
from dirt.sources.push import Ignored, Push, SourceError
from dirt.sources.webhooks import github_push, gitlab_push
from dirt.web.auth import require_write
from dirt.web.common import read_body, service_of

log = logging.getLogger("dirt.web")

router = APIRouter(prefix="/hooks", tags=["hooks"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not a push dirt can read (not JSON, fields missing); nothing stored"},
    401: {"description": "Missing or wrong signature, token or API token"},
    403: {"description": "No secret is configured for this forge: every delivery is refused"},
    413: {"description": "Body over web.max_body_bytes"},
    422: {"description": "The push's records were rejected (e.g. a [ci] task that does not exist)"},
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    202: {
        "description": "Taken: `records` made, `existing` already stored, `replay` when the "
        "delivery was taken before, `ignored` what was left out and why",
        "content": {
            "application/json": {
                "example": {
                    "ok": True,
                    "records": ["1481a2de7b2a7d02428ad93446ab166be7793fbb"],
                    "tasks": 2,
                    "existing": [],
                    "replay": False,
                    "ignored": [],
                }
            }
        },
    },
}


def _taken(taken: Taken) -> JSONResponse:
    body = {
        "ok": True,
        "records": [r.id for r in taken.records],
        "tasks": len(taken.tasks),
        "existing": taken.existing,
        "replay": taken.replay,
        "ignored": taken.ignored,
    }
    return JSONResponse(body, status_code=202)


async def _take(request: Request, source: str, parse: Callable[[bytes], Push | Ignored]) -> Any:
    raw = await read_body(request)
    try:
        found = parse(raw)
    except SourceError as exc:
        log.warning("%s delivery refused (HTTP %d): %s", source, exc.status, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    if isinstance(found, Ignored):
        log.info("%s delivery %s ignored: %s", source, found.delivery or "-", found.reason)
        return _taken(Taken(ignored=[found.reason]))
    try:
        taken = await run_in_threadpool(service_of(request).take_push, found)
    except SubmissionError as exc:
        log.error("%s push to %s rejected: %s", source, found.repository, "; ".join(exc.problems))
        raise
    return _taken(taken)


def _secret(request: Request, forge: str) -> str | None:
    hooks = request.app.state.settings.hooks
    variable = getattr(hooks, f"{forge}_secret_env")
    return (os.environ.get(variable) or None) if variable else None


@router.post(
    "/git",
    summary="A push, as the post-receive hook of `dirt hook install` sends it",
    status_code=202,
    dependencies=[Depends(require_write)],
    responses=RESPONSES,
)
async def git_hook(request: Request) -> Any:
    delivery = request.headers.get("x-dirt-delivery")
    return await _take(request, "git", lambda raw: parse_hook_payload(raw, delivery))


def _forge_route(forge: str, parse: Callable[[Mapping[str, str], bytes, str | None], Any]) -> None:
    """POST /hooks/{forge}: a push event verified with the forge's secret."""

    async def forge_hook(request: Request) -> Any:
        secret = _secret(request, forge)
        return await _take(request, forge, lambda raw: parse(request.headers, raw, secret))

    forge_hook.__name__ = f"{forge}_hook"  # the operation's id in the OpenAPI schema
    router.post(
        f"/{forge}",
        summary=FORGE_SUMMARIES[forge],
        status_code=202,
        responses=RESPONSES,
    )(forge_hook)


FORGE_SUMMARIES = {
    "github": "A GitHub push event (X-Hub-Signature-256 with [hooks] github_secret_env)",
    "gitlab": "A GitLab push or tag push event (X-Gitlab-Token with [hooks] gitlab_secret_env)",
}
_forge_route("github", github_push)
_forge_route("gitlab", gitlab_push)
