"""Who may read and write through the CouchDB routes: dirt's rules, with CouchDB's logins.

A CouchDB client logs in with name = the API token's name (`dirt token create NAME`) and
password = the token: by HTTP Basic auth on each request (credentials in the URL), or once by
`POST /_session`, which sets the `AuthSession` cookie. Either counts as the token itself would.
Otherwise dirt's rules hold: reads open unless `auth.read = "token"`, writes from loopback while
the server listens on loopback, or with `Authorization: Bearer TOKEN`. Wrong credentials are
refused (401) even where they are not needed, so a misconfigured client learns it at once.
"""

from __future__ import annotations

import base64
import binascii

from fastapi import Request

from dirt.couch.errors import CouchError
from dirt.web.auth import access

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


def login(request: Request, name: str, password: str) -> bool:
    """True when `password` is a valid API token named `name`."""
    found = access(request).service.verify_token(password) if password else None
    return found is not None and found == name


def identity(request: Request) -> tuple[str | None, str]:
    """(the logged-in token's name or None, how: "basic", "cookie" or "")."""
    cached: tuple[str | None, str] | None = getattr(request.state, "couch_identity", None)
    if cached is not None:
        return cached
    found: tuple[str | None, str] = (None, "")
    credentials = basic_credentials(request)
    if credentials is not None:
        if not login(request, *credentials):
            raise CouchError("unauthorized", BAD_LOGIN)
        found = (credentials[0], "basic")
    elif cookie := request.cookies.get(SESSION_COOKIE):
        name = access(request).service.verify_token(cookie)
        if name is not None:
            found = (name, "cookie")
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
    if name is not None and _same_origin(request):
        return True
    return access(request).can_write(request)


def require_read(request: Request) -> None:
    if not can_read(request):
        raise CouchError(
            "unauthorized",
            'reading needs an API token (auth.read = "token"): log in with name = the token\'s '
            "name and password = the token (dirt token create NAME)",
        )


def require_write(request: Request) -> None:
    if not can_write(request):
        raise CouchError(
            "unauthorized",
            "writing needs an API token: log in with name = the token's name and password = "
            "the token (dirt token create NAME); without one, writes are allowed only from this "
            "machine while the server listens on loopback",
        )
