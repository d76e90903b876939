"""Who a web request writes for: every write made while serving a request is audited (in its
own transaction, by the service) under the actor this module names.

The actor is the token the request carries, by name: `Authorization: Bearer` ("token"), the
/login cookie ("cookie"), CouchDB's Basic login or session cookie ("basic", "session"); else,
from loopback, the user on this machine whose process holds the connection ("loopback");
else "anonymous" (a server whose writes need no token, which dirt never is off loopback). An
agent's registration is audited under its token ("agent"); its jobs' traffic (claims,
heartbeats, output, results: the work a dispatcher does unaudited for SSH nodes) is not.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request

from dirt.models import Actor
from dirt.service.base import acting
from dirt.web.auth import COOKIE, COUCH_COOKIE, access, is_loopback, reader_token
from dirt.web.peer import peer_user

READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Writes made for a pull-mode agent's jobs: a dispatcher's work, not a user's action.
UNAUDITED = "/api/agent/jobs"


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if sep else None


def actor_of(request: Request) -> Actor:
    """The actor of a request (see the module's docstring)."""
    checker = access(request)
    client = request.client.host if request.client else None
    line = f"{request.method} {request.url.path}"
    found = checker.identity(request)
    if found is not None:
        bearer = request.headers.get("authorization", "").lower().startswith("bearer ")
        return Actor(found.name, "token" if bearer else "cookie", client, line)
    agent = checker.agent_identity(request)
    if agent is not None:
        return Actor(agent.name, "agent", client, line)
    basic = _basic(request)
    if basic is not None:
        token = reader_token(checker.service.find_token(basic[1]))
        if token is not None and token.name == basic[0]:
            return Actor(token.name, "basic", client, line)
    session = request.cookies.get(COUCH_COOKIE)
    if session and request.cookies.get(COOKIE) is None:
        token = reader_token(checker.service.find_token(session))
        if token is not None:
            return Actor(token.name, "session", client, line)
    if request.client is not None and is_loopback(client):
        server = request.scope.get("server")
        user = peer_user((request.client.host, request.client.port), server)
        return Actor(user or "unknown", "loopback", client, line)
    return Actor("anonymous", "anonymous", client, line)


class AuditContext:
    """ASGI middleware: the writes of a non-GET request are audited as made by its actor."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") in READS
            or scope.get("path", "").startswith(UNAUDITED)
        ):
            await self.app(scope, receive, send)
            return
        with acting(lambda: actor_of(Request(scope))):
            await self.app(scope, receive, send)
