"""Records and tasks as CouchDB documents (the original's format plus `_rev`); no I/O.

A task's attachments appear as CouchDB's `_attachments`: stubs (`content_type`, `digest`,
`length`, `revpos`, `stub`), or with their `data` in base64 when asked for. Its `results`
still list them under `attachments`, as dirt's own API does.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from dirt.models import Attachment, Record, Task, TaskState

# Fields of a document that are CouchDB's bookkeeping, not its content.
META_FIELDS = frozenset(
    {
        "_id",
        "_rev",
        "_revisions",
        "_revs_info",
        "_attachments",
        "_conflicts",
        "_deleted_conflicts",
        "_local_seq",
        "_deleted",
    }
)


def digest_of(content: bytes) -> str:
    """CouchDB's attachment digest: md5 in base64."""
    md5 = hashlib.md5(content, usedforsecurity=False).digest()
    return "md5-" + base64.b64encode(md5).decode("ascii")


def content_of(model: Record | Task) -> dict[str, Any]:
    """The document's fields without `_id` and CouchDB's bookkeeping."""
    doc = model.to_doc()
    if isinstance(model, Task) and model.cancel_requested and model.state is TaskState.RUNNING:
        doc["cancel_requested"] = True
    return {k: v for k, v in doc.items() if k not in META_FIELDS}


def attachment_entry(
    attachment: Attachment, digest: str, revpos: int, data: bytes | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "content_type": attachment.content_type,
        "revpos": revpos,
        "digest": digest,
    }
    if data is None:
        entry.update(length=attachment.size, stub=True)
    else:
        entry["data"] = base64.b64encode(data).decode("ascii")
    return entry


def document(
    model: Record | Task,
    rev: str,
    attachments: dict[str, dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`_id` and `_rev` first, then the fields, then `_attachments` and any `extra` meta."""
    doc: dict[str, Any] = {"_id": model.id, "_rev": rev, **content_of(model)}
    if attachments:
        doc["_attachments"] = attachments
    doc.update(extra or {})
    return doc
