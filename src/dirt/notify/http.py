"""One JSON request to a forge or a webhook receiver, its failure sorted: temporary or final."""

from __future__ import annotations

import email.utils
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from dirt import __version__
from dirt.notify.base import PermanentFailure, TemporaryFailure

USER_AGENT = f"dirt/{__version__}"
# Worth asking again: the server was busy, timed out or is rate limiting.
RETRY_STATUSES = frozenset({408, 425, 429})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A POST is never re-sent elsewhere: a redirect is reported (fix the configured URL)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _retry_after(headers: Any, now: float) -> float | None:
    """Seconds to wait from Retry-After, or from GitHub's X-RateLimit-Reset when exhausted."""
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value:
        if value.strip().isdigit():
            return float(value)
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - now) if when else None
    if headers.get("X-RateLimit-Remaining") == "0" and headers.get("X-RateLimit-Reset"):
        try:
            return max(0.0, float(headers["X-RateLimit-Reset"]) - now)
        except ValueError:
            return None
    return None


def _snippet(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(2000).decode("utf-8", "replace")
    except OSError:
        return ""
    try:
        message = json.loads(text).get("message")
        if message:
            return f": {message}"
    except (ValueError, AttributeError):
        pass
    return f": {text[:300]}" if text.strip() else ""


def request_json(
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
) -> int:
    """Send the request; the 2xx status, or TemporaryFailure / PermanentFailure saying why."""
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("User-Agent", USER_AGENT)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        what = f"{method} {url}: HTTP {exc.code} {exc.reason}{_snippet(exc)}"
        wait = _retry_after(exc.headers, time.time())
        rate_limited = exc.code == 403 and wait is not None
        if exc.code >= 500 or exc.code in RETRY_STATUSES or rate_limited:
            raise TemporaryFailure(what, retry_after=wait) from None
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "?") if exc.headers else "?"
            raise PermanentFailure(f"{what} (redirected to {where}: fix the URL)") from None
        raise PermanentFailure(what) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise PermanentFailure(f"{method} {url}: {reason}") from None
        raise TemporaryFailure(f"{method} {url}: {reason}") from None


def post_json(url: str, payload: Any, headers: Mapping[str, str], timeout: float) -> int:
    return request_json("POST", url, json.dumps(payload).encode("utf-8"), headers, timeout)
