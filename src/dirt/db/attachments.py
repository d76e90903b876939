"""Attachments: files a task attached to its results, stored apart from them."""

from __future__ import annotations

from collections.abc import Sequence

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
                "content": a.content or b"",
                "created": a.created,
            }
            for a in items
        ],
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
        found[row.task_id].append(
            Attachment(
                row.task_id,
                row.filename,
                row.link_name,
                row.content_type,
                row.size,
                None,
                row.created,
            )
        )
    return found


def get_attachment(conn: Connection, task_id: str, filename: str) -> Attachment | None:
    row = conn.execute(
        select(attachments).where(
            attachments.c.task_id == task_id, attachments.c.filename == filename
        )
    ).first()
    if row is None:
        return None
    return Attachment(
        row.task_id,
        row.filename,
        row.link_name,
        row.content_type,
        row.size,
        row.content,
        row.created,
    )


def delete_attachments(conn: Connection, task_ids: Sequence[str]) -> None:
    """Forget the attachments of tasks about to run again."""
    if task_ids:
        conn.execute(delete(attachments).where(attachments.c.task_id.in_(list(task_ids))))
