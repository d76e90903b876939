"""Who may read and who may write.

Reads are open unless `auth.read = "token"`. Writes need an API token (`Authorization: Bearer`,
or the cookie set by /login), except from a loopback client while the server itself is bound
to loopback. Writes that rely on the cookie or on loopback must come from dirt's own pages
(Origin check) and name a loopback Host (no DNS rebinding).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from dirt.service import Service

COOKIE = "dirt_token"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_only(value: str) -> str:
    """`host:port` or `[v6]:port` -> host."""
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Access:
    def __init__(self, service: Service, bind_host: str) -> None:
        self.service = service
        self.loopback_bound = is_loopback(bind_host)
        self.reads_open = service.settings.auth.read == "open"

    def _token(self, request: Request) -> tuple[str | None, bool]:
        """(token, came from a header)."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), True
        cookie = request.cookies.get(COOKIE)
        return (cookie, False) if cookie else (None, False)

    def identity(self, request: Request) -> str | None:
        """The name of the request's valid token, or None (looked up once per request)."""
        if not hasattr(request.state, "dirt_identity"):
            token, _ = self._token(request)
            request.state.dirt_identity = self.service.verify_token(token) if token else None
        name: str | None = request.state.dirt_identity
        return name

    def _trusted_local(self, request: Request) -> bool:
        client = request.client.host if request.client else None
        host_header = _host_only(request.headers.get("host", ""))
        return self.loopback_bound and is_loopback(client) and is_loopback(host_header)

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def can_write(self, request: Request) -> bool:
        token, from_header = self._token(request)
        if token and from_header:
            return self.identity(request) is not None
        if not self._same_origin(request):
            return False
        return self._trusted_local(request) or (
            token is not None and self.identity(request) is not None
        )

    def signed_in(self, request: Request) -> bool:
        """May this browser change things (shows the buttons)?"""
        return self._trusted_local(request) or self.identity(request) is not None

    def can_read(self, request: Request) -> bool:
        return self.reads_open or self.signed_in(request)

    def require_read(self, request: Request) -> None:
        if not self.can_read(request):
            raise HTTPException(
                401,
                'reading needs an API token (auth.read = "token"): send '
                "'Authorization: Bearer TOKEN' or sign in at /login",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def require_write(self, request: Request) -> None:
        if self.can_write(request):
            return
        if not self._same_origin(request):
            raise HTTPException(403, "cross-origin write refused")
        raise HTTPException(
            401,
            "writing needs an API token: make one with `dirt token create NAME` and send "
            "'Authorization: Bearer TOKEN' (writes without one are allowed only from this "
            "machine while the server listens on loopback)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def access(request: Request) -> Access:
    found: Access = request.app.state.access
    return found


def require_read(request: Request) -> None:
    access(request).require_read(request)


def require_write(request: Request) -> None:
    access(request).require_write(request)
