"""CouchDB's server-level endpoints: welcome, `_all_dbs`, `_dbs_info`, `_uuids`, `_session`, `_up`.

`GET /` is dirt's overview page for a browser (an Accept header naming text/html) and CouchDB's
welcome object for everything else, which is what CouchDB clients send.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from dirt import __version__
from dirt.couch.errors import CouchError
from dirt.couch.revs import Position, encode_seq
from dirt.couch.store import CouchStore
from dirt.web.couch import database_name
from dirt.web.couchdb import auth
from dirt.web.couchdb.http import Params, couch_json, read_body, store_of

# The CouchDB release whose HTTP API this surface follows (string sequences, _bulk_get...).
COUCHDB_VERSION = "3.3.3"
MAX_UUIDS = 1000
SESSION_MAX_AGE = 30 * 24 * 3600

router = APIRouter(tags=["CouchDB"], include_in_schema=False)


def welcome(store: CouchStore) -> dict[str, Any]:
    return {
        "couchdb": "Welcome",
        "version": COUCHDB_VERSION,
        "git_sha": "dirt",
        "uuid": store.uuid,
        "features": [],
        "vendor": {"name": "dirt", "version": __version__},
    }


def wants_html(request_headers: dict[str, str] | Any) -> bool:
    return "text/html" in request_headers.get("accept", "")


class CouchWelcome:
    """ASGI middleware: `GET /` and `HEAD /` without text/html in Accept get the welcome, unless
    they are the overview page's own requests (a query, or its live part's X-Dirt-Fragment)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/"
            and scope["method"] in ("GET", "HEAD")
            and not scope.get("query_string")
            and b"text/html" not in (headers := dict(scope["headers"])).get(b"accept", b"")
            and b"x-dirt-fragment" not in headers
        ):
            store: CouchStore = scope["app"].state.couch
            await couch_json(welcome(store))(scope, receive, send)
            return
        await self.app(scope, receive, send)


@router.get("/_up")
def up() -> Response:
    return couch_json({"status": "ok", "seeds": {}})


@router.get("/_all_dbs", dependencies=[Depends(auth.require_read)])
def all_dbs(request: Request) -> Response:
    return couch_json([database_name(request)])


def database_info(request: Request) -> dict[str, Any]:
    """CouchDB's database info: counts without a scan, sizes of the store file."""
    store = store_of(request)
    count, seq = store.info()
    update_seq = encode_seq(Position(seq))
    return {
        "db_name": database_name(request),
        "doc_count": count,
        "doc_del_count": 0,
        "update_seq": update_seq,
        "committed_update_seq": update_seq,
        "purge_seq": "0-dirt",
        "compact_running": False,
        "sizes": store.sizes(),
        "disk_format_version": 8,
        "instance_start_time": "0",
        "props": {},
        "cluster": {"q": 1, "n": 1, "w": 1, "r": 1},
    }


@router.api_route("/_dbs_info", methods=["GET", "POST"], dependencies=[Depends(auth.require_read)])
async def dbs_info(request: Request) -> Response:
    name = database_name(request)
    keys: Any = [name]
    if request.method == "POST":
        keys = (await read_body(request) or {}).get("keys")
        if not isinstance(keys, list):
            raise CouchError("bad_request", '`keys` must be a list of database names: {"keys": []}')
    info = await run_in_threadpool(database_info, request) if name in keys else None
    return couch_json(
        [{"key": k, "info": info} if k == name else {"key": k, "error": "not_found"} for k in keys]
    )


@router.get("/_uuids")
def uuids(request: Request) -> Response:
    count = Params(request).integer("count", 1, minimum=1)
    if count > MAX_UUIDS:
        raise CouchError("bad_request", f"count must be at most {MAX_UUIDS}")
    return couch_json(
        {"uuids": [uuid.uuid4().hex for _ in range(count)]},
        headers={"Cache-Control": "must-revalidate, no-cache", "Pragma": "no-cache"},
    )


def _session_doc(request: Request) -> dict[str, Any]:
    name, how = auth.identity(request)
    roles = []
    if auth.can_read(request):
        roles.append("dirt:read")
    if auth.can_write(request):
        roles.append("dirt:write")
    return {
        "ok": True,
        "userCtx": {"name": name, "roles": roles},
        "info": {
            "authentication_handlers": ["cookie", "default"],
            **({"authenticated": "default" if how == "basic" else how} if how else {}),
        },
    }


@router.get("/_session")
def session(request: Request) -> Response:
    return couch_json(_session_doc(request))


@router.post("/_session")
async def log_in(request: Request) -> Response:
    """name = an API token's name, password = the token: sets the AuthSession cookie."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        form = parse_qs((await request.body())[:8192].decode("utf-8", "replace"))
        given: Any = {k: v[0] for k, v in form.items()}
    else:
        given = await read_body(request)
    if not isinstance(given, dict):
        raise CouchError("bad_request", 'send {"name": TOKEN_NAME, "password": TOKEN}')
    name, password = given.get("name"), given.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise CouchError("bad_request", 'send {"name": TOKEN_NAME, "password": TOKEN}')
    if not await run_in_threadpool(auth.login, request, name, password):
        raise CouchError("unauthorized", auth.BAD_LOGIN)
    response = couch_json({"ok": True, "name": name, "roles": ["dirt:read", "dirt:write"]})
    response.set_cookie(
        auth.SESSION_COOKIE,
        password,
        httponly=True,
        samesite="lax",
        max_age=SESSION_MAX_AGE,
        secure=request.url.scheme == "https",
    )
    return response


@router.delete("/_session")
def log_out() -> Response:
    response = couch_json({"ok": True})
    response.delete_cookie(auth.SESSION_COOKIE)
    return response


# Server endpoints of CouchDB that dirt does not have (it serves one database and replicates
# only as a source).
UNSUPPORTED = (
    "_replicate",
    "_replicator",
    "_users",
    "_active_tasks",
    "_scheduler",
    "_node",
    "_config",
    "_cluster_setup",
    "_membership",
    "_db_updates",
    "_global_changes",
    "_stats",
    "_system",
    "_utils",
    "_reshard",
    "_search_analyze",
    "_restart",
)
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "COPY"]


def not_implemented(what: str) -> CouchError:
    return CouchError(
        "not_implemented",
        f"dirt does not implement {what}; see the README's CouchDB compatibility section",
    )


for _name in UNSUPPORTED:
    for _path in (f"/{_name}", f"/{_name}/{{rest:path}}"):

        @router.api_route(_path, methods=ALL_METHODS)
        def unsupported(request: Request) -> Response:
            raise not_implemented(request.url.path)


# Registered after every other route of the app: the database name that is not dirt's.
fallback = APIRouter(include_in_schema=False)


@fallback.api_route("/{name}", methods=ALL_METHODS)
def other_database(request: Request, name: str) -> Response:
    if wants_html(request.headers):
        raise HTTPException(404, "Not Found")
    if name.startswith("_"):
        raise CouchError(
            "illegal_database_name",
            f"Name: {name!r}. A database name must begin with a letter.",
        )
    if request.method == "PUT":
        raise not_implemented(f"creating databases (dirt serves one: {database_name(request)!r})")
    raise CouchError("not_found", "Database does not exist.")
