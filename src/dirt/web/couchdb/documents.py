"""CouchDB's document endpoints: `/{db}/{docid}` and its attachments.

Records and tasks are documents. `PUT` and `POST /{db}` create them through dirt's validation;
the only change allowed to a stored document is a task's `state` (see `dirt.couch.edits`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from dirt.couch import edits, replication
from dirt.couch.errors import CouchError
from dirt.couch.revs import Position, encode_seq
from dirt.couch.store import Doc
from dirt.web.couchdb import auth
from dirt.web.couchdb.http import Params, couch_json, read_object, store_of
from dirt.web.couchdb.server import not_implemented
from dirt.web.security import attachment_response

router = APIRouter(tags=["CouchDB"], include_in_schema=False)
READ = [Depends(auth.require_read)]
WRITE = [Depends(auth.require_write)]


def _etag(rev: str) -> dict[str, str]:
    return {"ETag": f'"{rev}"'}


def _written(request: Request, doc_id: str, rev: str, status: int = 201) -> Response:
    location = str(request.base_url).rstrip("/") + request.url.path.rsplit("/", 1)[0]
    headers = {**_etag(rev), "Location": f"{location}/{quote(doc_id, safe='')}"}
    if Params(request).text("batch") == "ok":
        status = 202
    return couch_json({"ok": True, "id": doc_id, "rev": rev}, status, headers)


async def create_document(request: Request, doc_id: str | None, body: dict[str, Any]) -> Response:
    if Params(request).text("new_edits") == "false" or body.get("new_edits") is False:
        raise replicated_writes()
    store = store_of(request)
    made, rev = await run_in_threadpool(edits.create, store, doc_id, body)
    if doc_id is None:  # POST /{db}: the Location is the new document under the database
        location = str(request.base_url).rstrip("/") + request.url.path.rstrip("/")
        headers = {**_etag(rev), "Location": f"{location}/{quote(made, safe='')}"}
        return couch_json({"ok": True, "id": made, "rev": rev}, 201, headers)
    return _written(request, made, rev)


def replicated_writes() -> CouchError:
    return not_implemented("replicated writes (new_edits=false): dirt is a replication source")


def _wanted_rev(request: Request, body: dict[str, Any] | None = None) -> str | None:
    rev = Params(request).text("rev")
    if rev is None:
        rev = request.headers.get("if-match", "").strip().strip('"') or None
    if rev is None and body is not None and isinstance(body.get("_rev"), str):
        rev = body["_rev"]
    return rev


def _open_revs(params: Params) -> list[Any] | None:
    if params.text("open_revs") == "all":
        return None
    wanted = params.json("open_revs")
    if not isinstance(wanted, list):
        raise CouchError("bad_request", 'open_revs must be "all" or a JSON list of revisions')
    return wanted


def _multipart(entries: list[dict[str, Any]]) -> Response:
    """open_revs as multipart/mixed (what CouchDB's own replicator asks for)."""
    boundary = uuid.uuid4().hex
    parts = []
    for entry in entries:
        body = json.dumps(entry.get("ok", entry), separators=(",", ":"))
        parts.append(f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{body}\r\n")
    payload = "".join(parts) + f"--{boundary}--"
    return Response(payload, media_type=f'multipart/mixed; boundary="{boundary}"')


@router.api_route("/{doc_id}", methods=["GET", "HEAD"], dependencies=READ)
async def get_document(request: Request, doc_id: str) -> Response:
    store = store_of(request)
    params = Params(request)
    doc: Doc | None = await run_in_threadpool(store.get, doc_id)
    if doc is None:
        raise CouchError("not_found", "missing")
    revs = params.flag("revs")
    latest = params.flag("latest")
    inline = params.flag("attachments")
    if "open_revs" in params:
        entries = await run_in_threadpool(
            lambda: replication.open_revs(
                store, doc, _open_revs(params), revs=revs, latest=latest, inline=inline
            )
        )
        accept = request.headers.get("accept", "")
        if "multipart/mixed" in accept and "application/json" not in accept:
            return _multipart(entries)
        return couch_json(entries)
    rev = params.text("rev")
    if rev is not None and rev != doc.rev and not (latest and store.known(doc.row, rev)):
        raise CouchError("not_found", "missing")
    if request.headers.get("if-none-match", "").strip('"') == doc.rev:
        return Response(status_code=304, headers=_etag(doc.rev))
    if request.method == "HEAD":
        return Response(headers={**_etag(doc.rev), "Content-Type": "application/json"})
    meta: dict[str, Any] = {}
    if params.flag("revs_info"):
        ids = store.revisions(doc.row)["ids"]
        meta["_revs_info"] = [
            {"rev": f"{doc.row.revision - i}-{h}", "status": "missing" if i else "available"}
            for i, h in enumerate(ids)
        ]
    if params.flag("local_seq"):
        meta["_local_seq"] = encode_seq(Position(doc.row.seq, doc.row.kind, doc.row.id))
    rendered = await run_in_threadpool(
        lambda: store.render([doc], inline=inline, revs=revs, meta=[meta])[0]
    )
    return couch_json(rendered, headers=_etag(doc.rev))


@router.put("/{doc_id}", dependencies=WRITE)
async def put_document(request: Request, doc_id: str) -> Response:
    body = await read_object(request)
    if Params(request).text("new_edits") == "false":
        raise replicated_writes()
    rev = _wanted_rev(request, body)
    new = await run_in_threadpool(edits.update, store_of(request), doc_id, body, rev)
    return _written(request, doc_id, new)


@router.delete("/{doc_id}", dependencies=WRITE)
async def delete_document(request: Request, doc_id: str) -> Response:
    doc = await run_in_threadpool(store_of(request).get, doc_id, False)
    if doc is None:
        raise CouchError("not_found", "missing")
    if _wanted_rev(request) != doc.rev:
        raise CouchError("conflict", "Document update conflict.")
    raise edits.forbidden_delete(doc_id)


@router.api_route("/{doc_id}", methods=["COPY"])
def copy_document(request: Request) -> Response:
    raise not_implemented("COPY")


@router.api_route("/{doc_id}/{filename:path}", methods=["GET", "HEAD"], dependencies=READ)
async def get_attachment(request: Request, doc_id: str, filename: str) -> Response:
    store = store_of(request)
    _, found = await run_in_threadpool(store.attachment, doc_id, filename)
    digest = await run_in_threadpool(store.digest, found)
    if request.headers.get("if-none-match", "").strip('"') == digest:
        return Response(status_code=304, headers={"ETag": f'"{digest}"'})
    response = attachment_response(found)
    response.headers["ETag"] = f'"{digest}"'
    response.headers["Content-MD5"] = digest.removeprefix("md5-")
    if request.method == "HEAD":
        return Response(headers=dict(response.headers))
    return response


@router.api_route("/{doc_id}/{filename:path}", methods=["PUT", "DELETE"], dependencies=WRITE)
def change_attachment(doc_id: str) -> Response:
    raise CouchError(
        "forbidden",
        f"attachments of {doc_id} come from its task's results; they cannot be written",
    )
