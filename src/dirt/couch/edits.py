"""Writes through the CouchDB interface: new records and tasks, cancel and retry, `_local` docs.

A new document is a submission of one document: the same validation as `dirt submit`, problems
answered as `403 forbidden`. dirt owns every stored document (a task's state, node, results...);
the one change a client may write is a task's `state`, exactly as `dirt cancel` and `dirt retry`
do: to "cancelled" (a waiting task at once; a running one is killed by its dispatcher, and shows
`cancel_requested` until then) or to "waiting" (a finished task runs again). The `_rev` check
and the change happen in one write transaction, so a stale `_rev` is always `409 conflict`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from dirt.couch.docs import META_FIELDS, content_of
from dirt.couch.errors import CouchError, conflict
from dirt.couch.revs import rev_of
from dirt.couch.store import CouchStore, Doc
from dirt.db import attachments as attachments_db
from dirt.db import control as control_db
from dirt.db import couch_docs as docs_db
from dirt.db import couch_local
from dirt.db.engine import read_transaction, write_transaction
from dirt.documents.submission import id_problem
from dirt.errors import SubmissionError
from dirt.models import Task, TaskState
from dirt.service import Service

log = logging.getLogger("dirt")

MAX_LOCAL_ID = 200
EDITS = {TaskState.CANCELLED.value: "cancel", TaskState.WAITING.value: "retry"}


def _write(service: Service, work: Callable[[Any, int], Any]) -> Any:
    """The service's write path: one transaction, the change sequence bumped, listeners told."""
    return service._write(work)


def create(store: CouchStore, doc_id: str | None, body: dict[str, Any]) -> tuple[str, str]:
    """Store a new record or task; returns (id, rev). `doc_id` None: the server picks one."""
    if doc_id is None:
        doc_id = body["_id"] if "_id" in body else uuid.uuid4().hex
    elif "_id" in body and body["_id"] != doc_id:
        raise CouchError("bad_request", "Document id must match the URL's id.")
    if not isinstance(doc_id, str) or doc_id.startswith("_"):
        raise CouchError("bad_request", "Only reserved document ids may start with underscore.")
    if problem := id_problem(doc_id, "'_id'"):
        raise CouchError("bad_request", problem)
    if store.get(doc_id, full=False) is not None:
        raise conflict()
    doc = {k: v for k, v in body.items() if k not in META_FIELDS}
    try:
        store.service.submit([{**doc, "_id": doc_id}])
    except SubmissionError as exc:
        if any(p.endswith("already exists") or "already exists (" in p for p in exc.problems):
            raise conflict() from None
        raise CouchError("forbidden", "; ".join(exc.problems)) from None
    return doc_id, rev_of(store.uuid, doc_id, 1)


def update(store: CouchStore, doc_id: str, body: dict[str, Any], rev: str | None) -> str:
    """Apply a client's version of a stored document; returns the new `_rev`."""
    current = store.get(doc_id)
    if current is None:
        if rev is not None:
            raise conflict()
        return create(store, doc_id, body)[1]
    if rev is None or rev != current.rev:
        raise conflict()
    if body.get("_deleted") is True:
        raise forbidden_delete(doc_id)
    action = _edit(current, body)
    if action is None:
        return current.rev
    task = current.model
    assert isinstance(task, Task)

    def work(conn: Any, seq: int) -> int:
        if docs_db.revision_of(conn, "task", doc_id) != current.row.revision:
            raise conflict()
        if action == "cancel":
            if not control_db.cancel_task(conn, doc_id, time.time(), seq):
                raise CouchError("forbidden", f"task {doc_id} is {task.state}: nothing to cancel")
        else:
            retried = control_db.retry_tasks(conn, [doc_id], seq)
            if not retried:
                raise CouchError(
                    "forbidden",
                    f"task {doc_id} is {task.state}: only a finished task can be retried",
                )
            attachments_db.delete_attachments(conn, retried)
        return docs_db.revision_of(conn, "task", doc_id) or 0

    revision = _write(store.service, work)
    log.info("Task %s: %s requested over the CouchDB API", doc_id, action)
    return rev_of(store.uuid, doc_id, revision)


def _edit(current: Doc, body: dict[str, Any]) -> str | None:
    """ "cancel", "retry" or None (nothing changed); anything else is forbidden."""
    stored = content_of(current.model)
    wanted = {k: v for k, v in body.items() if k not in META_FIELDS}
    changed = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
    if not changed:
        return None
    if current.row.kind == "record":
        raise CouchError(
            "forbidden",
            f"record {current.row.id} cannot change once stored (changed: {', '.join(changed)}); "
            "add tasks to it as new task documents",
        )
    state = wanted.get("state")
    action = EDITS.get(state) if changed == ["state"] and isinstance(state, str) else None
    if action is None:
        raise CouchError(
            "forbidden",
            f"dirt owns task {current.row.id}'s fields ({', '.join(changed)} changed): a client "
            "may only set 'state' to 'cancelled' (cancel) or to 'waiting' (run a finished task "
            "again)",
        )
    return action


def forbidden_delete(doc_id: str) -> CouchError:
    return CouchError(
        "forbidden",
        f"dirt keeps every record and task ({doc_id}); to stop a task set its 'state' to "
        "'cancelled'",
    )


# ---- _local documents -----------------------------------------------------------------------


def _local_id(local_id: str) -> str:
    if not local_id or len(local_id) > MAX_LOCAL_ID or not local_id.isprintable():
        raise CouchError("bad_request", f"_local id must be 1-{MAX_LOCAL_ID} printable characters")
    return local_id


def _local_rev(rev: Any) -> int:
    """`0-N` -> N; no rev -> 0."""
    if rev is None:
        return 0
    text = str(rev)
    if text.startswith("0-") and text[2:].isdigit():
        return int(text[2:])
    raise CouchError("bad_request", f"Invalid rev format for a _local document: {text[:40]!r}")


def get_local(store: CouchStore, local_id: str) -> dict[str, Any]:
    with read_transaction(store.service.engine) as conn:
        found = couch_local.get_local(conn, _local_id(local_id))
    if found is None:
        raise CouchError("not_found", "missing")
    revision, body = found
    return {**body, "_id": f"_local/{local_id}", "_rev": f"0-{revision}"}


def put_local(store: CouchStore, local_id: str, body: dict[str, Any], rev: Any) -> str:
    """Write a `_local` document (not in `_changes`, so the sequence does not move)."""
    if body.get("_id", f"_local/{local_id}") != f"_local/{local_id}":
        raise CouchError("bad_request", "Document id must match the URL's id.")
    expected = _local_rev(rev if rev is not None else body.get("_rev"))
    content = {k: v for k, v in body.items() if k not in META_FIELDS}
    with write_transaction(store.service.engine) as conn:
        if body.get("_deleted") is True:
            if not couch_local.delete_local(conn, _local_id(local_id), expected):
                raise conflict()
            return f"0-{expected}"
        written = couch_local.put_local(conn, _local_id(local_id), content, expected, time.time())
    if written is None:
        raise conflict()
    return f"0-{written}"


def delete_local(store: CouchStore, local_id: str, rev: Any) -> None:
    with write_transaction(store.service.engine) as conn:
        if not couch_local.delete_local(conn, _local_id(local_id), _local_rev(rev)):
            raise CouchError("not_found", "missing") if rev is None else conflict()
