"""Who may read and who may write.

Reads: `[auth] read = "auto"` (the default) leaves them open while the server listens on
loopback only, and asks for a token (any scope) as soon as it listens on another address or
sits behind a reverse proxy; "open" and "token" say so whatever the address. Writes need a token
of scope "api" (`Authorization: Bearer`, or the cookie set by /login), except from a loopback
client while the server itself is bound to loopback and no proxy is configured. Writes that rely
on the cookie or on loopback must come from dirt's own pages (Origin check) and name a loopback
Host (no DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from dirt.db.tokens import TokenInfo, digest
from dirt.models import TokenScope
from dirt.service import Service

COOKIE = "dirt_token"
# CouchDB's session cookie (`POST /_session`) carries a dirt token too.
COUCH_COOKIE = "AuthSession"


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


@dataclass(frozen=True)
class ReadMode:
    """Whether reads need a token here, and why: what the server says at start."""

    open: bool
    reason: str

    @property
    def why(self) -> str:
        if self.open:
            return f"reads are open to anyone who can reach the server ({self.reason})"
        return f"reads need an API token ({self.reason})"


def read_mode(setting: str, bind_host: str, behind_proxy: bool) -> ReadMode:
    """`[auth] read` ("auto", "open", "token") where the server listens on `bind_host`."""
    where = f"it listens on {bind_host}" + (", behind a reverse proxy" if behind_proxy else "")
    if setting == "open":
        return ReadMode(True, f'[auth] read = "open"; {where}')
    if setting == "token":
        return ReadMode(False, f'[auth] read = "token"; {where}')
    if behind_proxy:
        return ReadMode(
            False, f'{where} ([web] forwarded_allow_ips); [auth] read = "open" opens them'
        )
    if is_loopback(bind_host):
        return ReadMode(True, f"{where}, loopback only")
    return ReadMode(False, f'{where}, beyond loopback; [auth] read = "open" opens them')


def reader_token(found: TokenInfo | None) -> TokenInfo | None:
    """`found` when it may read the store (scope read or api); an agent's token is None."""
    return found if found is not None and found.scope.may_read else None


class TokenCache:
    """Token lookups, kept until the store changes (any write bumps the change sequence, so a
    revoked token stops working as soon as the server sees the revocation)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._seq = -1
        self._found: dict[str, TokenInfo | None] = {}

    def cached(self, token: str, seq: int) -> tuple[bool, TokenInfo | None]:
        if seq < 0:  # no change hub to tell when the store changed: never cached
            return False, None
        with self._lock:
            if seq != self._seq:
                self._found.clear()
                self._seq = seq
            key = digest(token)
            return key in self._found, self._found.get(key)

    def lookup(self, token: str, seq: int) -> TokenInfo | None:
        found = self.service.find_token(token)
        with self._lock:
            if seq == self._seq and len(self._found) < 10_000:
                self._found[digest(token)] = found
        return found


class Access:
    def __init__(
        self,
        service: Service,
        bind_host: str,
        *,
        behind_proxy: bool = False,
        current_seq: Callable[[], int] | None = None,
    ) -> None:
        self.service = service
        self.behind_proxy = behind_proxy
        # Token-less writes: only when nobody but this machine can reach the server directly.
        self.loopback_bound = is_loopback(bind_host) and not behind_proxy
        self.mode = read_mode(service.settings.auth.read, bind_host, behind_proxy)
        self.reads_open = self.mode.open
        self.tokens = TokenCache(service)
        # The newest change the server knows of (the change hub's): cached lookups last until
        # it moves. Without one, every request looks its token up.
        self._current_seq = current_seq or (lambda: -1)

    def _token(self, request: Request) -> tuple[str | None, bool]:
        """(token, came from a header)."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), True
        cookie = request.cookies.get(COOKIE)
        return (cookie, False) if cookie else (None, False)

    def bearer(self, request: Request) -> str | None:
        """The token of the request's `Authorization: Bearer` header, if any."""
        token, from_header = self._token(request)
        return token if from_header else None

    def _remember(self, request: Request, found: TokenInfo | None) -> TokenInfo | None:
        request.state.dirt_identity = found
        return found

    def identity(self, request: Request) -> TokenInfo | None:
        """The request's valid token of scope read or api, or None; looked up once per
        request."""
        if hasattr(request.state, "dirt_identity"):
            known: TokenInfo | None = request.state.dirt_identity
            return known
        return self._remember(request, reader_token(self.any_token(request)))

    def any_token(self, request: Request) -> TokenInfo | None:
        """The request's valid token of any scope (an agent's too), or None."""
        token, seq, hit, found = self._cached_token(request)
        return found if hit or token is None else self.tokens.lookup(token, seq)

    def _cached_token(self, request: Request) -> tuple[str | None, int, bool, TokenInfo | None]:
        """The request's token, the sequence it was looked at, and whether the cache knew it
        (then with what it found)."""
        token, _ = self._token(request)
        if not token:
            return None, 0, True, None
        seq = self._current_seq()
        hit, found = self.tokens.cached(token, seq)
        return token, seq, hit, found

    async def resolve(self, request: Request) -> TokenInfo | None:
        """`identity`, without blocking the event loop on the store."""
        if hasattr(request.state, "dirt_identity"):
            known: TokenInfo | None = request.state.dirt_identity
            return known
        token, seq, hit, found = self._cached_token(request)
        if not hit and token is not None:
            found = await run_in_threadpool(self.tokens.lookup, token, seq)
        return self._remember(request, reader_token(found))

    def agent_identity(self, request: Request) -> TokenInfo | None:
        """The request's bearer token when it is a valid token of scope agent, else None."""
        token, from_header = self._token(request)
        if not token or not from_header:
            return None  # never a cookie: a browser does not run agents
        found = self.any_token(request)
        return found if found is not None and found.scope is TokenScope.AGENT else None

    def trusted_local(self, request: Request) -> bool:
        client = request.client.host if request.client else None
        host_header = _host_only(request.headers.get("host", ""))
        return self.loopback_bound and is_loopback(client) and is_loopback(host_header)

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.headers.get("host", "")

    def _writer(self, request: Request) -> bool:
        found = self.identity(request)
        return found is not None and found.scope.may_write

    def can_write(self, request: Request) -> bool:
        token, from_header = self._token(request)
        if token and from_header:
            return self._writer(request)
        if not self._same_origin(request):
            return False
        return self.trusted_local(request) or (token is not None and self._writer(request))

    def signed_in(self, request: Request) -> bool:
        """May this browser change things (shows the buttons)?"""
        return self.trusted_local(request) or self._writer(request)

    def reader(self, request: Request) -> str | None:
        """The name of a read-only token this browser signed in with, else None."""
        found = self.identity(request)
        return found.name if found is not None and not found.scope.may_write else None

    def can_read(self, request: Request) -> bool:
        return self.reads_open or self.trusted_local(request) or self.identity(request) is not None

    def _refuse_read(self) -> HTTPException:
        return HTTPException(
            401,
            f"{self.mode.why}: send 'Authorization: Bearer TOKEN' or sign in at /login "
            "(`dirt token create NAME --scope read` makes a read-only token)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def require_read(self, request: Request) -> None:
        if self.reads_open or self.trusted_local(request):
            return
        if await self.resolve(request) is None:
            raise self._refuse_read()

    def require_write(self, request: Request) -> None:
        if self.can_write(request):
            return
        if not self._same_origin(request):
            raise HTTPException(403, "cross-origin write refused")
        found = self.identity(request)
        if found is not None:
            raise HTTPException(
                403,
                f"token {found.name!r} may only read (scope {found.scope.value}); writing needs "
                "a token of scope api: `dirt token create NAME`",
            )
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


async def require_read(request: Request) -> None:
    await access(request).require_read(request)


async def require_write(request: Request) -> None:
    checker = access(request)
    await checker.resolve(request)  # the token, if any, looked up off the event loop
    checker.require_write(request)
