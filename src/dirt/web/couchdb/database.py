"""CouchDB's database endpoints for the project's database: info, `_all_docs`, `_local` docs,
the replication reads (`_revs_diff`, `_bulk_get`), and `501 not_implemented` for the rest.

Mounted under `/{database}` (`[project] database`, else the project's name).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from dirt.couch import edits, replication
from dirt.couch.errors import CouchError
from dirt.couch.revs import REVS_LIMIT
from dirt.couch.store import CouchStore, Doc
from dirt.web.couchdb import auth
from dirt.web.couchdb.documents import create_document
from dirt.web.couchdb.http import Params, couch_json, read_object, store_of, stream_rows
from dirt.web.couchdb.server import ALL_METHODS, database_info, not_implemented

PAGE = 1000
KEYS_PAGE = 500
MAX_KEYS = 100_000

router = APIRouter(tags=["CouchDB"], include_in_schema=False)
READ = [Depends(auth.require_read)]
WRITE = [Depends(auth.require_write)]


@router.api_route("", methods=["GET", "HEAD"], dependencies=READ)
@router.api_route("/", methods=["GET", "HEAD"], dependencies=READ)
async def info(request: Request) -> Response:
    if request.method == "HEAD":
        return Response(status_code=200, headers={"Content-Type": "application/json"})
    return couch_json(await run_in_threadpool(database_info, request))


@router.put("", dependencies=WRITE)
@router.put("/", dependencies=WRITE)
def create_database(request: Request) -> Response:
    raise CouchError("file_exists", "The database could not be created, the file already exists.")


@router.delete("", dependencies=WRITE)
@router.delete("/", dependencies=WRITE)
def delete_database() -> Response:
    raise CouchError("forbidden", "dirt's database cannot be deleted over the CouchDB API")


@router.post("", dependencies=WRITE)
@router.post("/", dependencies=WRITE)
async def post_document(request: Request) -> Response:
    return await create_document(request, None, await read_object(request))


# ---- _all_docs ------------------------------------------------------------------------------


def _row(store: CouchStore, doc: Doc, rendered: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": doc.row.id, "key": doc.row.id, "value": {"rev": doc.rev}}
    if rendered is not None:
        row["doc"] = rendered
    return row


def _rows(store: CouchStore, docs: list[Doc], include: bool, inline: bool) -> list[Any]:
    rendered = store.render(docs, inline=inline) if include else [None] * len(docs)
    return [_row(store, d, r) for d, r in zip(docs, rendered, strict=True)]


def _keyed_rows(store: CouchStore, keys: list[Any], include: bool, inline: bool) -> list[Any]:
    found = store.get_many([k for k in keys if isinstance(k, str)], full=include)
    docs = [found[k] for k in keys if isinstance(k, str) and k in found]
    rows = iter(_rows(store, docs, include, inline))
    return [
        next(rows) if isinstance(k, str) and k in found else {"key": k, "error": "not_found"}
        for k in keys
    ]


@router.api_route("/_all_docs", methods=["GET", "POST"], dependencies=READ)
async def all_docs(request: Request) -> Response:
    """Keyset pages of both tables, streamed; `skip` rows are read and dropped."""
    store = store_of(request)
    params = Params(request)
    keys = params.json("keys")
    if request.method == "POST":
        keys = (await read_object(request)).get("keys", keys)
    if keys is not None and (not isinstance(keys, list) or len(keys) > MAX_KEYS):
        raise CouchError("bad_request", f"`keys` must be a list of at most {MAX_KEYS} ids")
    include = params.flag("include_docs")
    inline = params.flag("attachments")
    descending = params.flag("descending")
    limit = params.integer("limit", 2**62)
    skip = params.integer("skip", 0)
    key = params.key("key")
    start = key if key is not None else params.key("startkey", "start_key")
    end = key if key is not None else params.key("endkey", "end_key")
    inclusive_end = params.flag("inclusive_end", True)

    def page(after: str | None, count: int, drop: int) -> tuple[list[Doc], int, int | None]:
        return store.all_docs(
            start=after,
            end=end,
            inclusive_end=inclusive_end,
            descending=descending,
            limit=count,
            skip=drop,
            full=include,
        )

    if keys is not None:
        wanted = keys[skip : skip + limit]
        total, _ = await run_in_threadpool(store.info)
        first = await run_in_threadpool(_keyed_rows, store, wanted[:KEYS_PAGE], include, inline)
        offset: int | None = None
    else:
        docs, total, offset = await run_in_threadpool(page, start, min(limit, PAGE), skip)
        first = _rows(store, docs, include, inline)
    head: dict[str, Any] = {"total_rows": total, "offset": offset}
    if params.flag("update_seq"):
        head["update_seq"] = (await run_in_threadpool(database_info, request))["update_seq"]

    async def rows() -> AsyncIterator[list[Any]]:
        yield first
        if keys is not None:
            for at in range(KEYS_PAGE, len(wanted), KEYS_PAGE):
                chunk = wanted[at : at + KEYS_PAGE]
                yield await run_in_threadpool(_keyed_rows, store, chunk, include, inline)
            return
        sent, count, batch = len(first), min(limit, PAGE), first
        while sent < limit and len(batch) == count and batch:
            # The next page starts at the last id sent, and drops it (ids are unique).
            count = min(limit - sent, PAGE)
            docs, _, _ = await run_in_threadpool(page, batch[-1]["id"], count, 1)
            batch = _rows(store, docs, include, inline)
            sent += len(batch)
            if batch:
                yield batch

    return StreamingResponse(
        stream_rows(head, rows(), "rows"),
        media_type="application/json",
        headers={"Cache-Control": "must-revalidate"},
    )


# ---- replication ---------------------------------------------------------------------------


@router.post("/_revs_diff", dependencies=READ)
async def revs_diff(request: Request) -> Response:
    body = await read_object(request)
    if not all(isinstance(v, list) for v in body.values()):
        raise CouchError("bad_request", "each document id must map to a list of revisions")
    return couch_json(await run_in_threadpool(replication.revs_diff, store_of(request), body))


@router.post("/_missing_revs", dependencies=READ)
async def missing_revs(request: Request) -> Response:
    body = await read_object(request)
    if not all(isinstance(v, list) for v in body.values()):
        raise CouchError("bad_request", "each document id must map to a list of revisions")
    diff = await run_in_threadpool(replication.revs_diff, store_of(request), body)
    return couch_json({"missing_revs": {k: v["missing"] for k, v in diff.items()}})


@router.post("/_bulk_get", dependencies=READ)
async def bulk_get(request: Request) -> Response:
    params = Params(request)
    requests = (await read_object(request)).get("docs")
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        raise CouchError("bad_request", '`docs` must be a list of {"id", "rev"} objects')
    results = await run_in_threadpool(
        lambda: replication.bulk_get(
            store_of(request),
            requests,
            revs=params.flag("revs"),
            latest=params.flag("latest"),
            inline=params.flag("attachments"),
        )
    )
    return couch_json({"results": results})


@router.post("/_ensure_full_commit", dependencies=WRITE)
def ensure_full_commit() -> Response:
    # Every write is committed before it is answered.
    return couch_json({"ok": True, "instance_start_time": "0"}, 201)


@router.get("/_revs_limit", dependencies=READ)
def revs_limit() -> Response:
    return Response(str(REVS_LIMIT), media_type="application/json")


@router.get("/_local/{local_id:path}", dependencies=READ)
async def get_local(request: Request, local_id: str) -> Response:
    doc = await run_in_threadpool(edits.get_local, store_of(request), local_id)
    return couch_json(doc, headers={"ETag": f'"{doc["_rev"]}"'})


@router.put("/_local/{local_id:path}", dependencies=WRITE)
async def put_local(request: Request, local_id: str) -> Response:
    body = await read_object(request)
    rev = Params(request).text("rev")
    new = await run_in_threadpool(edits.put_local, store_of(request), local_id, body, rev)
    return couch_json({"ok": True, "id": f"_local/{local_id}", "rev": new}, 201)


@router.delete("/_local/{local_id:path}", dependencies=WRITE)
async def delete_local(request: Request, local_id: str) -> Response:
    rev = Params(request).text("rev") or request.headers.get("if-match", "").strip('"') or None
    await run_in_threadpool(edits.delete_local, store_of(request), local_id, rev)
    return couch_json({"ok": True, "id": f"_local/{local_id}", "rev": "0-0"})


# ---- what dirt does not do -----------------------------------------------------------------

UNSUPPORTED = (
    "_design",
    "_design_docs",
    "_find",
    "_index",
    "_explain",
    "_purge",
    "_purged_infos_limit",
    "_compact",
    "_view_cleanup",
    "_security",
    "_shards",
    "_sync_shards",
    "_local_docs",
    "_partition",
)


@router.put("/_revs_limit")
def set_revs_limit(request: Request) -> Response:
    raise not_implemented(request.url.path)


for _name in UNSUPPORTED:
    for _path in (f"/{_name}", f"/{_name}/{{rest:path}}"):

        @router.api_route(_path, methods=ALL_METHODS)
        def unsupported(request: Request) -> Response:
            raise not_implemented(request.url.path)


@router.api_route("/_all_docs/queries", methods=["POST"])
def all_docs_queries(request: Request) -> Response:
    raise not_implemented(request.url.path)
