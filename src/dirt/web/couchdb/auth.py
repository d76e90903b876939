"""Who may read and write through the CouchDB routes: dirt's rules, with CouchDB's logins.

A CouchDB client logs in with name = the API token's name (`dirt token create NAME`) and
password = the token: by HTTP Basic auth on each request (credentials in the URL), or once by
`POST /_session`, which sets the `AuthSession` cookie. Either counts as the token itself would:
a token of scope read reads, one of scope api also writes. Otherwise dirt's rules hold
(`dirt.web.auth`): reads open on a loopback-only server unless `auth.read` says otherwise,
writes from loopback while the server listens on loopback, or with `Authorization: Bearer`.
Wrong credentials are refused (401) even where they are not needed, so a misconfigured client
learns it at once.
"""

from __future__ import annotations

import base64
import binascii

from fastapi import Request

from dirt.couch.errors import CouchError
from dirt.db.tokens import TokenInfo
from dirt.web.auth import access, reader_token

SESSION_COOKIE = "AuthSession"
BAD_LOGIN = "Name or password is incorrect."


def basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise CouchError("unauthorized", "Malformed Basic credentials") from None
    if not sep:
        raise CouchError("unauthorized", "Malformed Basic credentials")
    return name, password


def _token(request: Request, token: str) -> TokenInfo | None:
    """The token when it may read (an agent's token logs in nowhere but the agent API)."""
    return reader_token(access(request).service.find_token(token)) if token else None


def login(request: Request, name: str, password: str) -> TokenInfo | None:
    """The token when `password` is a valid API token named `name`, else None."""
    found = _token(request, password)
    return found if found is not None and found.name == name else None


def _may_write(request: Request) -> bool:
    """Whether the logged-in token (see `identity`) may write."""
    return bool(getattr(request.state, "couch_may_write", False))


def identity(request: Request) -> tuple[str | None, str]:
    """(the logged-in token's name or None, how: "basic", "cookie" or "")."""
    cached: tuple[str | None, str] | None = getattr(request.state, "couch_identity", None)
    if cached is not None:
        return cached
    found: tuple[str | None, str] = (None, "")
    token: TokenInfo | None = None
    credentials = basic_credentials(request)
    if credentials is not None:
        token = login(request, *credentials)
        if token is None:
            raise CouchError("unauthorized", BAD_LOGIN)
        found = (token.name, "basic")
    elif cookie := request.cookies.get(SESSION_COOKIE):
        token = _token(request, cookie)
        if token is not None:
            found = (token.name, "cookie")
    request.state.couch_may_write = token is not None and token.scope.may_write
    request.state.couch_identity = found
    return found


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host", "")


def can_read(request: Request) -> bool:
    name, _ = identity(request)
    return name is not None or access(request).can_read(request)


def can_write(request: Request) -> bool:
    # Browsers send cached Basic credentials and cookies with another site's forms too.
    name, _ = identity(request)
    if name is not None and _may_write(request) and _same_origin(request):
        return True
    return access(request).can_write(request)


def require_read(request: Request) -> None:
    if not can_read(request):
        raise CouchError(
            "unauthorized",
            f"{access(request).mode.why}: log in with name = the token's name and password = "
            "the token (dirt token create NAME --scope read)",
        )


def require_write(request: Request) -> None:
    if not can_write(request):
        raise CouchError(
            "unauthorized",
            "writing needs an API token of scope api: log in with name = the token's name and "
            "password = the token (dirt token create NAME); without one, writes are allowed "
            "only from this machine while the server listens on loopback",
        )
