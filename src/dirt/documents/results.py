"""A task's results as a node sent them -> the results dict to store and its attachments.

An attachment arrives either with its `contents` (str or bytes) or, once the master's
connection has put its bytes in the blob store, with a `blob` ``{"sha256", "size", "text"}``
naming them (see ``dirt.dispatch.incoming``).
"""

from __future__ import annotations

import json
import mimetypes
from typing import Any

from dirt.blobs import valid_sha256
from dirt.models import Attachment

MAX_ATTACHMENT_FILENAME = 255


class ResultError(ValueError):
    """A task's results break the contract; the message is the task's failure reason."""


def _clip(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_results(task_id: str, value: Any, now: float) -> tuple[dict[str, Any], list[Attachment]]:
    """Split a task's results into the stored dict and its attachments, or raise ResultError."""
    if not isinstance(value, dict) or not isinstance(value.get("success"), bool):
        raise ResultError(f"task returned {_clip(value)}; expected a dict with a boolean 'success'")
    results = dict(value)
    raw = results.pop("attachments", None) or []
    if not isinstance(raw, list):
        raise ResultError("'attachments' must be a list of {filename, contents or path, link_name}")
    attachments: list[Attachment] = []
    links = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        where = f"attachment {index + 1}"
        if not isinstance(item, dict):
            raise ResultError(f"{where}: expected an object, got {_clip(item, 60)}")
        filename = item.get("filename")
        if (
            not isinstance(filename, str)
            or not filename
            or filename in (".", "..")
            or any(c in filename for c in "/\\\0")
            or len(filename) > MAX_ATTACHMENT_FILENAME
        ):
            raise ResultError(f"{where}: 'filename' {_clip(filename, 60)} is not a plain file name")
        if filename in names:
            raise ResultError(f"{where}: two attachments are named {filename!r}")
        names.add(filename)
        link_name = item.get("link_name") or filename
        if not isinstance(link_name, str):
            raise ResultError(f"{where}: 'link_name' must be a string")
        blob = item.get("blob")
        sha: str | None = None
        data: bytes | None = None
        if isinstance(blob, dict):
            sha, size, text = blob.get("sha256"), blob.get("size"), bool(blob.get("text"))
            if not isinstance(sha, str) or not valid_sha256(sha) or not isinstance(size, int):
                raise ResultError(f"{where}: not stored (bad blob reference {_clip(blob, 60)})")
        elif "contents" not in item and "path" in item:
            raise ResultError(f"{where}: the file {_clip(item['path'], 80)} was not uploaded")
        else:
            contents = item.get("contents", "")
            if isinstance(contents, str):
                data = contents.encode("utf-8")
            elif isinstance(contents, bytes | bytearray):
                data = bytes(contents)
            else:
                raise ResultError(f"{where}: 'contents' must be str or bytes")
            size, text = len(data), isinstance(contents, str)
        content_type = mimetypes.guess_type(filename)[0] or (
            "text/plain" if text else "application/octet-stream"
        )
        attachments.append(
            Attachment(task_id, filename, link_name, content_type, size, data, now, sha)
        )
        links.append({"filename": filename, "link_name": link_name, "size": size})
    if links:
        results["attachments"] = links
    try:
        json.dumps(results, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultError(f"results not JSON-serialisable: {exc}") from None
    return results, attachments
