"""The FastAPI application: pages, JSON API, CouchDB's _bulk_docs, change feed, static files."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from dirt import __version__
from dirt.config import Settings
from dirt.errors import (
    ConfigError,
    DirtError,
    InputError,
    NodeError,
    NotFoundError,
    ProjectNotFoundError,
    RequirementError,
    StateError,
    StoreUnavailableError,
    SubmissionError,
    UnauthorizedError,
)
from dirt.service import Service
from dirt.web import agent_api, api, changes, couch, couchdb, docs, hooks, output, pages
from dirt.web.agent_api import Cancels, Claimable, LeaseSweeper
from dirt.web.agent_lane import AgentLane
from dirt.web.answers import AnswerCache, KeptAnswers
from dirt.web.audit import AuditContext
from dirt.web.auth import Access
from dirt.web.hub import ChangeHub
from dirt.web.render import STATIC, make_templates
from dirt.web.security import SecurityHeaders

log = logging.getLogger("dirt.web")

WEB_THREADS = 16


# The status a DirtError answers with: the client's to fix (4xx) or the server's (5xx). The first
# class the error is an instance of wins; any other DirtError is a 400.
STATUS_OF: tuple[tuple[type[DirtError], int], ...] = (
    (SubmissionError, 422),  # rejected whole, every problem listed
    (RequirementError, 422),
    (InputError, 400),  # a malformed cursor, node address or token name
    (UnauthorizedError, 401),  # an agent's job token unknown, revoked or expired
    (NotFoundError, 404),
    (StateError, 409),  # e.g. retrying a task that is still running
    (NodeError, 502),  # a node that could not be reached
    (StoreUnavailableError, 503),  # the store is restarting or unreachable: try again
    (ConfigError, 500),  # the server's own settings, not the request
    (ProjectNotFoundError, 500),
)


def _status_of(exc: DirtError) -> int:
    return next((status for kind, status in STATUS_OF if isinstance(exc, kind)), 400)


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return (
        path.startswith(("/api/", "/hooks/"))
        or path.endswith("/_bulk_docs")
        or "text/html" not in request.headers.get("accept", "")
    )


def _error(
    request: Request,
    status: int,
    message: str,
    problems: list[str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    if _wants_json(request):
        body: dict[str, Any] = {"error": message}
        if problems is not None:
            body["problems"] = problems
        return JSONResponse(body, status_code=status, headers=headers)
    templates: Jinja2Templates = request.app.state.templates
    access = request.app.state.access
    context = {
        "status": status,
        "message": message,
        "problems": problems or [],
        "project": request.app.state.settings.name,
        "signed_in": access.signed_in(request),
        "reader": access.reader(request),
        "fragment": False,
    }
    return templates.TemplateResponse(
        request, "error.html", context, status_code=status, headers=headers
    )


def create_app(source: Settings | Service, *, bind_host: str | None = None) -> FastAPI:
    """The web app over a Service (shared with a dispatcher) or over Settings (its own)."""
    owns_service = isinstance(source, Settings)
    service = Service(source) if isinstance(source, Settings) else source
    settings = service.settings
    hub = ChangeHub(service)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Requests read the store on at most this many threads: as many as the store keeps
        # connections open for (more would only queue there, or open and close connections).
        anyio.to_thread.current_default_thread_limiter().total_tokens = WEB_THREADS
        hub.start()
        sweeper = LeaseSweeper(service)
        sweeper.start()
        try:
            yield
        finally:
            sweeper.stop()
            hub.stop()
            if owns_service:
                service.close()

    app = FastAPI(
        title=f"dirt: {settings.name}",
        version=__version__,
        description="Records, tasks, results and nodes of a dirt project. Reads are open while "
        "the server listens on loopback only, and need `Authorization: Bearer TOKEN` (`dirt "
        "token create NAME --scope read`) elsewhere, unless `[auth] read` says otherwise; "
        "writes need a token of scope api (`dirt token create NAME`) except from loopback "
        "while the server listens on loopback.",
        lifespan=lifespan,
        docs_url=None,  # web/docs.py serves /docs and /redoc without a CDN
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings
    app.state.hub = hub
    app.state.answers = AnswerCache()
    app.state.claimable = Claimable(service)
    app.state.cancels = Cancels(service, hub)
    app.state.access = Access(
        service,
        bind_host or settings.web.host,
        behind_proxy=bool(settings.web.forwarded_allow_ips),
        current_seq=lambda: hub.seq,
    )
    app.state.templates = make_templates()

    app.include_router(agent_api.router)  # first: a busy agent asks once per task
    app.include_router(api.router)
    app.include_router(output.router)
    app.include_router(changes.router)
    app.include_router(pages.router)
    app.include_router(pages.open_router)
    app.include_router(couch.router)
    app.include_router(hooks.router)
    app.include_router(docs.router)
    docs.mount_assets(app)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    couchdb.install(app, service)  # last: it answers for database names no route above took
    app.add_middleware(AgentLane)  # innermost: the headers and audit rules of every route
    app.add_middleware(KeptAnswers, paths=frozenset({"/api/records"}))
    app.add_middleware(SecurityHeaders)
    app.add_middleware(AuditContext)

    @app.exception_handler(DirtError)
    async def dirt_error(request: Request, exc: DirtError) -> Response:
        if isinstance(exc, SubmissionError):
            return _error(request, 422, "rejected; nothing was stored", exc.problems)
        return _error(request, _status_of(exc), str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return _error(request, 422, "invalid request", problems)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {})["Task"] = api.TASK_SCHEMA
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{}, {"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
