"""Server-rendered pages; they work without JavaScript, which only adds live updates.

A request with the header `X-Dirt-Fragment: 1` gets only the page's live part (the element
with id "live"), which the page's script swaps in when the change feed says something changed.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from dirt import documents
from dirt.errors import InputError
from dirt.models import TaskState
from dirt.views import short_master, shown_node
from dirt.web.auth import COOKIE, require_read, require_write
from dirt.web.common import service_of

router = APIRouter(dependencies=[Depends(require_read)], include_in_schema=False)
open_router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
QUEUE_SIZE = 200
CHART_RUNS = 200
STATES = [s.value for s in TaskState]
# Runs that reached a verdict: a cancelled run says nothing about how often a task succeeds.
RATED = frozenset(s.value for s in TaskState if s.finished and s is not TaskState.CANCELLED)


def _render(
    request: Request, template: str, context: dict[str, Any], status: int = 200
) -> Response:
    fragment = request.headers.get("x-dirt-fragment") == "1"
    templates: Jinja2Templates = request.app.state.templates
    access = request.app.state.access
    context = {
        **context,
        "project": request.app.state.settings.name,
        "signed_in": access.signed_in(request),
        "reader": access.reader(request),
        "fragment": fragment,
        "now": time.time(),
    }
    name = template.replace(".html", "_live.html") if fragment else template
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _cursor_or_none(text: str | None) -> tuple[tuple[float, str] | None, str | None]:
    try:
        return documents.parse_cursor(text), None
    except InputError as exc:
        return None, str(exc)


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request,
    before: str | None = Query(None, max_length=500),
    state: str | None = Query(None, max_length=20),
    q: str | None = Query(None, max_length=200),
    branch: str | None = Query(None, max_length=500),
) -> Response:
    service = service_of(request)
    seq = service.current_seq()
    cursor, problem = _cursor_or_none(before)
    if state and state not in STATES:
        problem, state = f"unknown state {state!r}; showing all records", None
    summaries = service.record_page(PAGE_SIZE, cursor, state or None, q or None, branch or None)
    older = None
    if len(summaries) == PAGE_SIZE:
        last = summaries[-1].record
        older = documents.make_cursor(last.created, last.id)
    return _render(
        request,
        "overview.html",
        {
            "summaries": summaries,
            "state": state or "",
            "q": q or "",
            "branch": branch or "",
            "older": older,
            "deep": before is not None,
            "problem": problem,
            "states": STATES,
            "seq": seq,
        },
    )


@router.get("/records/{record_id}", response_class=HTMLResponse)
def record_page(request: Request, record_id: str) -> Response:
    service = service_of(request)
    seq = service.current_seq()
    detail = service.record_detail(record_id)
    extra = detail.record.extra
    commit = _commit_of(extra)
    shown = {k: v for k, v in extra.items() if commit is None or k not in COMMIT_FIELDS}
    links = {
        key: value
        for key, value in shown.items()
        if isinstance(value, str) and value.startswith(("https://", "http://"))
    }
    context = {"detail": detail, "fields": shown, "links": links, "commit": commit, "seq": seq}
    return _render(request, "record.html", context)


# A record made from a commit shows these together, at the top: sha (linked), ref, author.
COMMIT_FIELDS = ("sha", "changeset_url", "ref", "author")


def _commit_of(extra: dict[str, Any]) -> dict[str, str] | None:
    sha = extra.get("sha")
    if not isinstance(sha, str) or not sha:
        return None
    found = {key: extra[key] for key in COMMIT_FIELDS if isinstance(extra.get(key), str)}
    url = found.get("changeset_url", "")
    if not url.startswith(("https://", "http://")):
        found.pop("changeset_url", None)
    ref = found.get("ref", "")
    if ref:
        found["branch"] = ref.removeprefix("refs/heads/")
    return found


@router.get("/tasks/{name}", response_class=HTMLResponse)
def task_page(
    request: Request, name: str, before: str | None = Query(None, max_length=500)
) -> Response:
    service = service_of(request)
    seq = service.current_seq()
    cursor, problem = _cursor_or_none(before)
    runs = service.task_runs(name, PAGE_SIZE, cursor)
    outcomes = service.task_run_outcomes(name, CHART_RUNS)
    finished = [r for r in outcomes if r["state"] in RATED]
    succeeded = sum(r["state"] == TaskState.SUCCEEDED for r in finished)
    rate = succeeded / len(finished) if finished else None
    older = None
    if len(runs) == PAGE_SIZE:
        older = documents.make_cursor(runs[-1].created, runs[-1].id)
    return _render(
        request,
        "task.html",
        {
            "name": name,
            "runs": runs,
            "outcomes": outcomes,
            "finished": len(finished),
            "rate": rate,
            "older": older,
            "deep": before is not None,
            "problem": problem,
            "seq": seq,
        },
    )


@router.get("/nodes", response_class=HTMLResponse)
def nodes_page(request: Request) -> Response:
    service = service_of(request)
    seq = service.current_seq()
    found = [shown_node(n, request.app.state.settings.nodes.show_environ) for n in service.nodes()]
    running = service.running_per_node()
    tasks = {n.address: service.running_on(n.address) for n in found if running.get(n.address)}
    masters = service.dispatchers()
    return _render(
        request,
        "nodes.html",
        {
            "nodes": found,
            "running": running,
            "tasks": tasks,
            "dispatchers": masters,
            "drivers": {d.id: short_master(d.id) for d in masters},
            "seq": seq,
        },
    )


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request) -> Response:
    service = service_of(request)
    seq = service.current_seq()
    return _render(request, "queue.html", {"queue": service.queue(QUEUE_SIZE), "seq": seq})


def _back(request: Request, default: str) -> str:
    """Where a form post returns: the page it came from, when that is on this site."""
    referer = request.headers.get("referer", "")
    host = request.headers.get("host", "")
    for scheme in ("http://", "https://"):
        prefix = f"{scheme}{host}/"
        if host and referer.startswith(prefix):
            return referer[len(prefix) - 1 :]
    return default


@router.post("/nodes/{address}/enable", dependencies=[Depends(require_write)])
def enable_node(request: Request, address: str) -> RedirectResponse:
    service_of(request).set_node_enabled(address, True)
    return RedirectResponse(_back(request, "/nodes"), status_code=303)


@router.post("/nodes/{address}/disable", dependencies=[Depends(require_write)])
def disable_node(request: Request, address: str) -> RedirectResponse:
    service_of(request).set_node_enabled(address, False)
    return RedirectResponse(_back(request, "/nodes"), status_code=303)


@router.post("/tasks/{task_id}/retry", dependencies=[Depends(require_write)])
def retry_task(request: Request, task_id: str) -> RedirectResponse:
    service_of(request).retry_task(task_id)
    return RedirectResponse(_back(request, "/"), status_code=303)


@router.post("/tasks/{task_id}/cancel", dependencies=[Depends(require_write)])
def cancel_task(request: Request, task_id: str) -> RedirectResponse:
    service_of(request).cancel_task(task_id)
    return RedirectResponse(_back(request, "/"), status_code=303)


# ---- signing in, health, metrics -----------------------------------------------------------


@open_router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return _render(request, "login.html", {"problem": None})


@open_router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    body = (await request.body())[:4096].decode("utf-8", "replace")
    token = (parse_qs(body).get("token") or [""])[0].strip()
    service = service_of(request)
    found = await run_in_threadpool(service.find_token, token) if token else None
    if found is None:
        return _render(request, "login.html", {"problem": "That is not a valid API token."}, 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        max_age=30 * 24 * 3600,
        secure=request.url.scheme == "https",
    )
    return response


@open_router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@open_router.get("/healthz", response_class=PlainTextResponse)
def healthz() -> str:
    return "ok\n"


QUANTILES = (0.5, 0.9, 0.99)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    m = service_of(request).metrics()
    lines = [
        "# HELP dirt_tasks Tasks in each state.",
        "# TYPE dirt_tasks gauge",
        # Every state, 0 included: a series that vanishes reads as "no data", not "none".
        *(f'dirt_tasks{{state="{s.value}"}} {m["tasks"].get(s.value, 0)}' for s in TaskState),
        "# HELP dirt_task_attempts_started_total Task attempts dispatched to nodes.",
        "# TYPE dirt_task_attempts_started_total counter",
        f"dirt_task_attempts_started_total {m['attempts_started']}",
        "# HELP dirt_task_duration_seconds Run time of the most recently completed tasks.",
        "# TYPE dirt_task_duration_seconds summary",
    ]
    durations = sorted(m["durations"])
    for q in QUANTILES:
        value = durations[min(len(durations) - 1, int(q * len(durations)))] if durations else 0
        lines.append(f'dirt_task_duration_seconds{{quantile="{q}"}} {value:.6f}')
    lines += [
        f"dirt_task_duration_seconds_sum {sum(durations):.6f}",
        f"dirt_task_duration_seconds_count {len(durations)}",
        "# HELP dirt_nodes_online Enabled nodes that answered their last check.",
        "# TYPE dirt_nodes_online gauge",
        f"dirt_nodes_online {m['nodes_online']}",
        "# HELP dirt_nodes Nodes known.",
        "# TYPE dirt_nodes gauge",
        f"dirt_nodes {m['nodes']}",
        "# HELP dirt_change_seq The change sequence: grows with every write.",
        "# TYPE dirt_change_seq counter",
        f"dirt_change_seq {m['seq']}",
    ]
    return PlainTextResponse(
        "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
    )
