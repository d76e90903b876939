"""The pull-mode agent's HTTP client: the master's API over kept-alive connections, a request
sent again with backoff while the master cannot be reached, and what an answer means (Refused,
Unreachable, Fatal). Stdlib only: shipped inside the served agent.py (see dirt.remote).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

# The agent API's version: sent at registration; the master (dirt.documents.agents) refuses
# another.
AGENT_PROTOCOL = 1
TOKEN_ENV = "DIRT_AGENT_TOKEN"  # where the token may come from instead of --token
BACKOFF_FIRST = 0.5
BACKOFF_MOST = 30.0
REQUEST_TIMEOUT = 60.0

log = logging.getLogger("dirt.agent")


class Refused(Exception):
    """The master answered no (4xx): the same request would get the same answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Unreachable(Exception):
    """No answer from the master (a network error, or 5xx): try again later."""


class Fatal(Exception):
    """The agent cannot go on (its token refused, the master's certificate not trusted)."""


class Backoff:
    """Waits between tries: doubling from BACKOFF_FIRST to BACKOFF_MOST, with jitter."""

    def __init__(self) -> None:
        self.delay = 0.0

    def wait(self, stopping: threading.Event, most: float = BACKOFF_MOST) -> None:
        self.delay = min(most, self.delay * 2 if self.delay else BACKOFF_FIRST)
        stopping.wait(self.delay * random.uniform(0.8, 1.2))

    def reset(self) -> None:
        self.delay = 0.0


class Master:
    """The master's HTTP API: one kept-alive connection per thread."""

    def __init__(
        self, url: str, token: str, stopping: threading.Event, ca: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Fatal(f"{url!r} is not an http:// or https:// URL of a dirt master")
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.token = token
        self.stopping = stopping
        self.context: ssl.SSLContext | None = None
        if self.https:
            try:
                self.context = ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                raise Fatal(f"--ca {ca}: cannot load certificates: {exc}") from None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict[int, http.client.HTTPConnection] = {}  # by thread
        self._severed: set[int] = set()  # threads whose request was cut (see `cut`)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.conn = conn
            with self._lock:
                self._open[threading.get_ident()] = conn
                self._severed.discard(threading.get_ident())  # a cut ended the one before
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                self._open.pop(threading.get_ident(), None)

    def forget(self) -> None:
        """Close the calling thread's connection (the thread ends)."""
        self._drop()
        with self._lock:
            self._severed.discard(threading.get_ident())

    def cut(self, thread: int | None = None) -> None:
        """Cut the connection of `thread` (every one, when None): a request held there (a
        request for work, a heartbeat) ends at once, and is not sent again."""
        with self._lock:
            found = [(t, c) for t, c in self._open.items() if thread is None or t == thread]
            self._severed.update(t for t, _ in found)
        for _, conn in found:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[int, Any]:
        """One request: (status, the JSON answer or None). Refused on a 4xx; Unreachable on a
        network error or a 5xx; Fatal when the master's certificate is not trusted."""
        sent = {"User-Agent": f"dirt-agent/{AGENT_PROTOCOL}", **(headers or {})}
        if method != "GET":
            sent["Authorization"] = f"Bearer {self.token}"
        data: bytes | None = None
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
            sent["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            sent["Content-Type"] = "application/json"
        for again in (False, True):
            conn = self._connection(timeout)
            reused = conn.sock is not None
            try:
                conn.request(method, self.base + path, body=data, headers=sent)
                response = conn.getresponse()
                payload = response.read()
            except ssl.SSLCertVerificationError as exc:
                self._drop()
                raise Fatal(f"{self.url}: the master's certificate is not trusted ({exc}); "
                            "give its CA with --ca FILE") from None  # fmt: skip
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                with self._lock:
                    severed = threading.get_ident() in self._severed
                if reused and not again and not severed:
                    # A kept-alive connection the server had closed (idle past its keep-alive
                    # timeout): a new one. A request cut on purpose (`cut`) is not sent again.
                    continue
                raise Unreachable(f"{self.url}: {exc or type(exc).__name__}") from None
            break
        if response.will_close:
            self._drop()
        answer: Any = None
        if payload and response.getheader("content-type", "").startswith("application/json"):
            try:
                answer = json.loads(payload)
            except ValueError:
                answer = None
        status = response.status
        if status >= 500:
            raise Unreachable(f"{self.url}: {status} {_error(answer, payload)}")
        if status >= 400:
            raise Refused(status, _error(answer, payload))
        return status, answer

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
        most: float = BACKOFF_MOST,
    ) -> tuple[int, Any]:
        """`send`, again and again with backoff (up to `most` seconds apart) while the master
        cannot be reached (until the agent stops: then Unreachable)."""
        backoff = Backoff()
        while True:
            try:
                answer = self.send(method, path, body, headers, timeout)
            except Unreachable as exc:
                if self.stopping.is_set():
                    raise
                if not backoff.delay:
                    log.warning("master unreachable (%s); trying again", exc)
                backoff.wait(self.stopping, most)
                continue
            if backoff.delay:
                log.info("master reachable again")
            return answer


def _error(answer: Any, payload: bytes) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        problems = answer.get("problems")
        return str(answer["error"]) + (": " + "; ".join(map(str, problems)) if problems else "")
    return payload[:300].decode("utf-8", "replace") or "no answer"
