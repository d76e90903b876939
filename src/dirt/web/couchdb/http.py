"""What the CouchDB routes share: CouchDB's JSON error shape, bodies, query parameters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from dirt.couch.errors import CouchError
from dirt.couch.store import CouchStore

JSON_HEADERS = {"Cache-Control": "must-revalidate"}


def store_of(request: Request) -> CouchStore:
    store: CouchStore = request.app.state.couch
    return store


def couch_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers={**JSON_HEADERS, **(headers or {})})


async def couch_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CouchError)
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="dirt"'
    return couch_json({"error": exc.error, "reason": exc.reason}, exc.status, headers)


async def read_body(request: Request) -> Any:
    """The request's JSON body, within `web.max_body_bytes` (CouchDB parses any content type)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("multipart/") or kind == "application/x-www-form-urlencoded":
        raise CouchError("bad_content_type", "Content-Type must be application/json")
    limit = request.app.state.settings.web.max_body_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise CouchError("too_large", f"the body is {length} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise CouchError("too_large", f"the body is over the limit of {limit} bytes")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CouchError("bad_request", f"invalid UTF-8 JSON: {exc}") from None


async def read_object(request: Request) -> dict[str, Any]:
    body = await read_body(request)
    if not isinstance(body, dict):
        raise CouchError("bad_request", "Request body must be a JSON object")
    return body


class Params:
    """Query parameters as CouchDB reads them: booleans, integers and JSON values."""

    def __init__(self, request: Request) -> None:
        self.values = request.query_params

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def text(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.values.get(name)
        if value is None:
            return default
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise CouchError("query_parse_error", f"Invalid boolean parameter {name}: {value[:40]!r}")

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.values.get(name)
        if value is None:
            return default
        if value.strip().lstrip("-").isdigit() and int(value) >= minimum:
            return int(value)
        raise CouchError(
            "query_parse_error",
            f"Invalid value for {name}: {value[:40]!r} (an integer >= {minimum})",
        )

    def json(self, *names: str) -> Any:
        """The first of `names` given, decoded as JSON; None when none is given."""
        for name in names:
            value = self.values.get(name)
            if value is not None:
                try:
                    return json.loads(value)
                except json.JSONDecodeError:
                    raise CouchError(
                        "query_parse_error", f"Invalid JSON for {name}: {value[:40]!r}"
                    ) from None
        return None

    def key(self, *names: str) -> str | None:
        value = self.json(*names)
        if value is not None and not isinstance(value, str):
            raise CouchError("query_parse_error", f"{names[0]} must be a JSON string (a doc id)")
        return value


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def stream_rows(
    head: dict[str, Any],
    pages: AsyncIterator[list[Any]],
    name: str,
    tail: Callable[[], dict[str, Any]] | None = None,
) -> AsyncIterator[bytes]:
    """`{...head, name: [rows...], ...tail()}` as CouchDB writes it: one row a line."""
    opening = _dumps(head)[:-1]
    yield (opening + ("," if head else "") + f'"{name}":[\r\n').encode()
    first = True
    async for rows in pages:
        for row in rows:
            yield (("" if first else ",\r\n") + _dumps(row)).encode()
            first = False
    ending = tail() if tail is not None else {}
    yield ("\r\n]" + ("," + _dumps(ending)[1:] if ending else "}") + "\n").encode()
