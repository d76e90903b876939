"""The JSON API under /api: the same use cases as the CLI, validated by documents.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dirt import documents
from dirt.models import TaskState
from dirt.views import (
    detail_view,
    dispatchers_view,
    node_view,
    nodes_view,
    queue_view,
    summary_view,
    task_view,
)
from dirt.web.answers import cached_json
from dirt.web.auth import require_read, require_write
from dirt.web.common import json_answer, read_json, service_of
from dirt.web.downloads import attachment_response

router = APIRouter(prefix="/api", dependencies=[Depends(require_read)])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request (bad JSON, bad cursor)"},
    401: {"description": "An API token is needed"},
    403: {"description": "A write from another web site's page, refused"},
    404: {"description": "No such record, task, node or attachment"},
    409: {"description": "Not possible in the object's current state"},
    413: {"description": "Body over web.max_body_bytes"},
    415: {"description": "Body is not JSON"},
    422: {
        "description": "Invalid request or rejected submission: `problems` lists every reason; "
        "nothing stored"
    },
}

RECORD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["record"],
                    "additionalProperties": False,
                    "properties": {
                        "record": {
                            "type": "object",
                            "required": ["_id"],
                            "properties": {
                                "_id": {"type": "string"},
                                "description": {"type": "string"},
                                "created": {"type": "number"},
                                "share": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": 1000,
                                    "description": "Turns per round under fair order",
                                },
                            },
                            "additionalProperties": True,
                        },
                        "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
                    },
                },
                "example": {
                    "record": {"_id": "r125", "description": "revision 125"},
                    "tasks": [{"name": "examples.simple", "platform": "linux"}],
                },
            }
        },
    }
}

TASKS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["tasks"],
                    "additionalProperties": False,
                    "properties": {
                        "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}}
                    },
                },
                "example": {"tasks": [{"name": "examples.simple"}]},
            }
        },
    }
}

TASK_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "_id": {"type": "string"},
        "name": {"type": "string", "description": "A module under tasks/, e.g. examples.simple"},
        "kwargs": {"type": "object"},
        "requires": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "priority": {"type": "integer"},
        "timeout": {"type": "number"},
        "max_attempts": {"type": "integer"},
        "created": {"type": "number"},
    },
    "additionalProperties": True,
}


def _next(items: list[Any], limit: int) -> str | None:
    if len(items) < limit or not items:
        return None
    last = items[-1]
    return documents.make_cursor(last.created, last.id)


@router.get(
    "/records", tags=["records"], summary="Records, newest first (keyset pages)", responses=ERRORS
)
async def list_records(
    request: Request,
    limit: int = Query(50, ge=1, le=500),
    before: str | None = Query(None, max_length=500, description="`next` of the previous page"),
    state: Annotated[
        TaskState | None, Query(description="Only records with a task in this state")
    ] = None,
    q: str | None = Query(None, max_length=200, description="Search ids and descriptions"),
    branch: str | None = Query(
        None,
        max_length=500,
        description="Only records made from a commit on this branch (`main`) or ref "
        "(`refs/tags/v1.0`)",
    ),
) -> Response:
    cursor = documents.parse_cursor(before)
    service = service_of(request)
    shown = state.value if state else None

    def page() -> dict[str, Any]:
        found = service.record_page(limit, cursor, shown, q, branch or None)
        return {
            "records": [summary_view(s) for s in found],
            "next": _next([s.record for s in found], limit),
        }

    # The list every open page and dashboard polls: one query per change of the store.
    return await cached_json(request, page)


@router.get(
    "/records/{record_id}", tags=["records"], summary="A record and its tasks", responses=ERRORS
)
async def get_record(request: Request, record_id: str) -> Response:
    service = service_of(request)
    return await json_answer(lambda: detail_view(service.record_detail(record_id)))


def _stored(submission: documents.Submission) -> dict[str, Any]:
    return {
        "ok": True,
        "records": [r.id for r in submission.records],
        "tasks": [t.id for t in submission.tasks],
    }


@router.post(
    "/records",
    tags=["records"],
    summary="Add a record with its tasks (atomic)",
    status_code=201,
    dependencies=[Depends(require_write)],
    openapi_extra=RECORD_BODY,
    responses=ERRORS,
)
async def add_record(request: Request) -> JSONResponse:
    docs = documents.record_envelope(await read_json(request))
    submission = await run_in_threadpool(service_of(request).submit, docs)
    return JSONResponse(_stored(submission), status_code=201)


@router.post(
    "/records/{record_id}/tasks",
    tags=["records"],
    summary="Add tasks to a stored record (atomic)",
    status_code=201,
    dependencies=[Depends(require_write)],
    openapi_extra=TASKS_BODY,
    responses=ERRORS,
)
async def add_tasks(request: Request, record_id: str) -> JSONResponse:
    service = service_of(request)
    docs = documents.tasks_envelope(record_id, await read_json(request))
    await run_in_threadpool(service.record, record_id)  # 404 when there is no such record
    submission = await run_in_threadpool(lambda: service.submit(docs, records_may_exist=True))
    return JSONResponse(_stored(submission), status_code=201)


@router.get(
    "/tasks", tags=["tasks"], summary="Every run of a task name, newest first", responses=ERRORS
)
async def task_history(
    request: Request,
    name: str = Query(..., min_length=1, max_length=200),
    limit: int = Query(50, ge=1, le=500),
    before: str | None = Query(None, max_length=500),
) -> Response:
    cursor = documents.parse_cursor(before)
    service = service_of(request)

    def runs() -> dict[str, Any]:
        found = service.task_runs(name, limit, cursor)
        return {"tasks": [task_view(t) for t in found], "next": _next(found, limit)}

    return await json_answer(runs)


@router.get(
    "/tasks/{task_id}",
    tags=["tasks"],
    summary="One task with attempts and attachments",
    responses=ERRORS,
)
async def get_task(request: Request, task_id: str) -> Response:
    service = service_of(request)
    return await json_answer(lambda: task_view(*service.task_detail(task_id)))


def _task_changed(request: Request, task_id: str) -> dict[str, Any]:
    """The answer to a retry or cancel: the task as it is now."""
    return {"ok": True, "task": task_view(*service_of(request).task_detail(task_id))}


@router.post(
    "/tasks/{task_id}/retry",
    tags=["tasks"],
    summary="Run a finished task again",
    dependencies=[Depends(require_write)],
    responses=ERRORS,
)
def retry_task(request: Request, task_id: str) -> dict[str, Any]:
    service_of(request).retry_task(task_id)  # StateError (409) when the task is not finished
    return _task_changed(request, task_id)


@router.post(
    "/tasks/{task_id}/cancel",
    tags=["tasks"],
    summary="Cancel a waiting or running task",
    dependencies=[Depends(require_write)],
    responses=ERRORS,
)
def cancel_task(request: Request, task_id: str) -> dict[str, Any]:
    service_of(request).cancel_task(task_id)  # StateError (409) when the task is finished
    return _task_changed(request, task_id)


@router.get(
    "/tasks/{task_id}/attachments/{filename}",
    tags=["tasks"],
    summary="A file a task attached to its results (streamed; HTTP Range requests served)",
    responses={
        **ERRORS,
        206: {"description": "The one byte range asked for (`Range: bytes=A-B`)"},
        416: {"description": "The range asked for is past the end of the file"},
    },
    response_class=Response,
)
def get_attachment(request: Request, task_id: str, filename: str) -> Response:
    return attachment_response(request, service_of(request).open_attachment(task_id, filename))


@router.get(
    "/nodes", tags=["nodes"], summary="Every node with its slots, load and health", responses=ERRORS
)
async def list_nodes(request: Request) -> Response:
    service = service_of(request)
    show = _show_environ(request)
    return await json_answer(lambda: nodes_view(service.nodes(), service.running_per_node(), show))


def _show_environ(request: Request) -> list[str]:
    shown: list[str] = request.app.state.settings.nodes.show_environ
    return shown


@router.get(
    "/queue",
    tags=["queue"],
    summary="Records with waiting or running tasks, oldest first, with the share each gets",
    responses=ERRORS,
)
def get_queue(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The order in force, the dispatchers running, totals, and per record its `share`,
    `waiting` and `running` tasks and `gets` (its part of the tasks running now)."""
    return queue_view(service_of(request).queue(limit))


@router.get(
    "/dispatchers",
    tags=["nodes"],
    summary="The dispatchers (masters) on this store: leases, nodes driven, tasks running",
    responses=ERRORS,
)
def list_dispatchers(request: Request) -> list[dict[str, Any]]:
    return dispatchers_view(service_of(request).dispatchers())


def _set_enabled(request: Request, address: str, enabled: bool) -> dict[str, Any]:
    service = service_of(request)
    service.set_node_enabled(address, enabled)
    node = service.node(address)
    return node_view(node, service.running_per_node().get(address, 0), _show_environ(request))


@router.post(
    "/nodes/{address}/enable",
    tags=["nodes"],
    summary="Let a node take tasks",
    dependencies=[Depends(require_write)],
    responses=ERRORS,
)
def enable_node(request: Request, address: str) -> dict[str, Any]:
    return _set_enabled(request, address, True)


@router.post(
    "/nodes/{address}/disable",
    tags=["nodes"],
    summary="Give a node no new tasks (running ones finish)",
    dependencies=[Depends(require_write)],
    responses=ERRORS,
)
def disable_node(request: Request, address: str) -> dict[str, Any]:
    return _set_enabled(request, address, False)
