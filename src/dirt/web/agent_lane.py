"""ASGI middleware: a busy agent's requests, one or two per task, answered without FastAPI's
routing and dependency solving.

`PUT /api/agent/jobs/{id}` (a result, which brings the next job) and `POST
/api/agent/jobs/request` go straight to their route's function in dirt.web.agent_api; what they
raise is answered by the app's own exception handlers, so every status, header and message is
the route's. Any other request (or a job id that is not plain digits, which the route refuses
with its own 422) goes on to the app. The routes stay, for the API's documentation.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dirt.web import agent_api

JOBS = "/api/agent/jobs/"
REQUEST = JOBS + "request"


class AgentLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "PUT" and path.startswith(JOBS):
                job = path[len(JOBS) :]
                if job.isascii() and job.isdigit():
                    request = Request(scope, receive)
                    await self._answer(request, agent_api.report(request, int(job)), send)
                    return
            elif method == "POST" and path == REQUEST:
                request = Request(scope, receive)
                await self._answer(request, agent_api.request_job(request), send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, request: Request, answering: Any, send: Send) -> None:
        try:
            response: Response = await answering
        except Exception as exc:
            handler = _handler(request, exc)
            if handler is None:
                raise  # a 500, as from the route
            response = await handler(request, exc)
        await response(request.scope, request.receive, send)


def _handler(request: Request, exc: Exception) -> Any:
    """The app's handler of `exc` (as Starlette's ExceptionMiddleware finds it), or None."""
    handlers = request.app.exception_handlers
    for kind in type(exc).__mro__:
        if kind in handlers:
            return handlers[kind]
    return None
