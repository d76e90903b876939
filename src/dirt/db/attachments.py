"""Attachments: files a task attached to its results, stored apart from them.

A row names its contents by sha256 (the blob store holds them, see `dirt.blobs`); rows stored
before the blob store existed have no sha256 and keep their contents in `content`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from dirt.db.schema import attachments
from dirt.models import Attachment

META_COLUMNS = (
    attachments.c.task_id,
    attachments.c.filename,
    attachments.c.link_name,
    attachments.c.content_type,
    attachments.c.size,
    attachments.c.created,
    attachments.c.sha256,
)


def insert_attachments(conn: Connection, items: Sequence[Attachment]) -> None:
    if not items:
        return
    conn.execute(
        insert(attachments),
        [
            {
                "task_id": a.task_id,
                "filename": a.filename,
                "link_name": a.link_name,
                "content_type": a.content_type,
                "size": a.size,
                "content": b"" if a.sha256 else (a.content or b""),
                "created": a.created,
                "sha256": a.sha256,
            }
            for a in items
        ],
    )


def _attachment(row: Any, content: bytes | None = None) -> Attachment:
    return Attachment(
        row.task_id,
        row.filename,
        row.link_name,
        row.content_type,
        row.size,
        content,
        row.created,
        row.sha256,
    )


def attachments_of(conn: Connection, task_ids: Sequence[str]) -> dict[str, list[Attachment]]:
    """Each task's attachments without their contents."""
    found: dict[str, list[Attachment]] = {t: [] for t in task_ids}
    if not task_ids:
        return found
    query = (
        select(*META_COLUMNS)
        .where(attachments.c.task_id.in_(list(task_ids)))
        .order_by(attachments.c.id)
    )
    for row in conn.execute(query):
        found[row.task_id].append(_attachment(row))
    return found


def get_attachment(conn: Connection, task_id: str, filename: str) -> Attachment | None:
    """One attachment; `content` is set only for a row stored before the blob store."""
    row = conn.execute(
        select(*META_COLUMNS, attachments.c.content).where(
            attachments.c.task_id == task_id, attachments.c.filename == filename
        )
    ).first()
    if row is None:
        return None
    return _attachment(row, None if row.sha256 else row.content)


def delete_attachments(conn: Connection, task_ids: Sequence[str]) -> None:
    """Forget the attachments of tasks about to run again (their blobs stay: content may be
    shared)."""
    if task_ids:
        conn.execute(delete(attachments).where(attachments.c.task_id.in_(list(task_ids))))
