"""CouchDB's `POST /{db}/_bulk_docs`, so the original's curl command works unchanged.

dirt stores a batch atomically: every document is stored, or none is. On success the answer is
CouchDB's: 201 and `[{"id", "ok": true, "rev"}]` in document order. When any document is
rejected the answer is 400 and one `{"id", "error", "reason"}` per document: `forbidden` with
the document's own problems, or `not_stored` for a valid document of a rejected batch (its reason
names the batch's problems).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dirt.config import Settings
from dirt.couch.revs import rev_of
from dirt.errors import SubmissionError
from dirt.web.auth import require_read, require_write
from dirt.web.common import read_json, service_of

router = APIRouter(dependencies=[Depends(require_read)])

BULK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["docs"],
                    "properties": {"docs": {"type": "array", "items": {"type": "object"}}},
                },
                "example": {
                    "docs": [
                        {"_id": "r125", "type": "record", "description": "revision 125"},
                        {"type": "task", "record_id": "r125", "name": "examples.simple"},
                    ]
                },
            }
        },
    }
}


def database_name(request: Request) -> str:
    settings: Settings = request.app.state.settings
    return settings.project.database or settings.project.name


def _problems_of(index: int, doc: Any, problems: list[str]) -> list[str]:
    """The problems documents.py reported about document `index` (0-based)."""
    label = re.compile(rf"^document {index + 1}(?: \(|:)")
    mine = [p for p in problems if label.match(p)]
    doc_id = doc.get("_id") if isinstance(doc, dict) else None
    if isinstance(doc_id, str):
        mine += [
            p
            for p in problems
            if p not in mine
            and (
                p.startswith(f"record {doc_id!r} ")
                or p.startswith(f"task {doc_id}:")
                or p == f"task id {doc_id!r} already exists"
            )
        ]
    return mine


@router.post(
    "/{db_name}/_bulk_docs",
    tags=["CouchDB"],
    summary="CouchDB-style bulk submission of records and tasks (atomic)",
    status_code=201,
    dependencies=[Depends(require_write)],
    openapi_extra=BULK_BODY,
    responses={
        400: {"description": "Rejected whole: one {id, error, reason} per document"},
        404: {"description": "No such database (the project's database name)"},
    },
)
async def bulk_docs(request: Request, db_name: str) -> JSONResponse:
    expected = database_name(request)
    if db_name != expected:
        return JSONResponse(
            {"error": "not_found", "reason": f"Database does not exist: dirt serves {expected!r}"},
            status_code=404,
        )
    payload = await read_json(request)
    if not isinstance(payload, dict) or not isinstance(payload.get("docs"), list):
        return JSONResponse(
            {"error": "bad_request", "reason": 'POST body must be {"docs": [...]}'},
            status_code=400,
        )
    docs = payload["docs"]
    try:
        submission = await run_in_threadpool(service_of(request).submit, payload)
    except SubmissionError as exc:
        answer = []
        for index, doc in enumerate(docs):
            doc_id = doc.get("_id") if isinstance(doc, dict) else None
            mine = _problems_of(index, doc, exc.problems)
            if mine:
                answer.append({"id": doc_id, "error": "forbidden", "reason": "; ".join(mine)})
            else:
                answer.append(
                    {
                        "id": doc_id,
                        "error": "not_stored",
                        "reason": "the batch is stored whole or not at all: "
                        + "; ".join(exc.problems),
                    }
                )
        return JSONResponse(answer, status_code=400)
    # Task ids dirt made up for documents without `_id`, in document order.
    made = iter(
        t.id for t, d in zip(submission.tasks, _task_docs(docs), strict=False) if "_id" not in d
    )
    answer = []
    server_uuid = request.app.state.couch.uuid
    for doc in docs:
        doc_id = doc.get("_id") or next(made, None)
        # The first revision, as GET /{db}/{id} shows it (see dirt.couch.revs).
        answer.append({"id": doc_id, "ok": True, "rev": rev_of(server_uuid, str(doc_id), 1)})
    return JSONResponse(answer, status_code=201)


def _task_docs(docs: list[Any]) -> list[dict[str, Any]]:
    return [d for d in docs if isinstance(d, dict) and d.get("type") == "task"]
