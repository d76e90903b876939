"""Reads of the CouchDB interface over a `Service`: documents, `_all_docs`, `_changes`, revisions.

Every method reads in one read transaction, so a page's documents, revisions and attachments
agree. Attachment digests (md5 of the contents) are remembered per attachment.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from dirt.couch import docs as couch_docs
from dirt.couch.errors import CouchError
from dirt.couch.revs import Position, known_revision, rev_of, revisions
from dirt.db import attachments as attachments_db
from dirt.db import couch_changes
from dirt.db import couch_docs as docs_db
from dirt.db.couch_docs import DocRow
from dirt.db.engine import current_seq, read_transaction
from dirt.errors import NotFoundError
from dirt.models import Attachment, Record, Task
from dirt.service import Service

# Counting past this many rows for `offset` or `pending` costs more than it tells.
COUNT_CAP = 10_000
DIGESTS_KEPT = 20_000


@dataclass
class Doc:
    """One document as read: its row (with the record or task when asked) and attachments."""

    row: DocRow
    rev: str
    attachments: list[Attachment] = field(default_factory=list)

    @property
    def model(self) -> Record | Task:
        assert self.row.model is not None, "read without its document"
        return self.row.model


@dataclass
class ChangesPage:
    docs: list[Doc]
    positions: list[Position]  # where the feed stands after each document
    last: Position
    pending: int | None


class CouchStore:
    """The CouchDB view of one service's store."""

    def __init__(self, service: Service) -> None:
        self.service = service
        with read_transaction(service.engine) as conn:
            self.uuid = docs_db.server_uuid(conn)
        self._digests: OrderedDict[tuple[str, str, float, int], str] = OrderedDict()
        self._lock = threading.Lock()

    # ---- revisions ------------------------------------------------------------------------

    def rev(self, row: DocRow) -> str:
        return rev_of(self.uuid, row.id, row.revision)

    def known(self, row: DocRow, rev: Any) -> int | None:
        """The generation of `rev` when it is this document's current revision or an ancestor."""
        return known_revision(self.uuid, row.id, row.revision, rev)

    def revisions(self, row: DocRow) -> dict[str, Any]:
        return revisions(self.uuid, row.id, row.revision)

    # ---- reads ----------------------------------------------------------------------------

    def _docs(self, conn: Connection, rows: list[DocRow]) -> list[Doc]:
        tasks = [r.id for r in rows if r.kind == "task" and r.model is not None]
        found = attachments_db.attachments_of(conn, tasks) if tasks else {}
        return [Doc(r, self.rev(r), found.get(r.id, []) if r.kind == "task" else []) for r in rows]

    def get(self, doc_id: str, full: bool = True) -> Doc | None:
        return self.get_many([doc_id], full).get(doc_id)

    def get_many(self, ids: Iterable[str], full: bool = True) -> dict[str, Doc]:
        with read_transaction(self.service.engine) as conn:
            rows = docs_db.docs_by_id(conn, ids, full)
            return {d.row.id: d for d in self._docs(conn, list(rows.values()))}

    def info(self) -> tuple[int, int]:
        """(document count, the store's sequence value)."""
        with read_transaction(self.service.engine) as conn:
            return docs_db.count_docs(conn), current_seq(conn)

    def current(self) -> int:
        return self.service.current_seq()

    def all_docs(
        self,
        *,
        start: str | None,
        end: str | None,
        inclusive_end: bool,
        descending: bool,
        limit: int,
        skip: int,
        full: bool,
    ) -> tuple[list[Doc], int, int | None]:
        """(documents, total_rows, offset); `skip` rows are read and dropped, as CouchDB does."""
        with read_transaction(self.service.engine) as conn:
            rows = docs_db.docs_in_range(
                conn,
                start,
                end,
                inclusive_end=inclusive_end,
                descending=descending,
                count=skip + limit,
                full=full,
            )[skip:]
            total = docs_db.count_docs(conn)
            offset: int | None = skip
            if start is not None:
                before = docs_db.count_before(conn, start, descending, COUNT_CAP)
                offset = None if before is None else before + skip
            return self._docs(conn, rows), total, offset

    def changes(
        self, after: Position, limit: int, doc_ids: Sequence[str] | None, full: bool
    ) -> ChangesPage:
        """The next `limit` changes after `after`, and where the feed then stands."""
        with read_transaction(self.service.engine) as conn:
            # Read the sequence first: every row stamped up to it is committed and visible below.
            now = current_seq(conn)
            rows = couch_changes.changes_after(conn, after, limit, doc_ids, full)
            positions = [Position(r.seq, r.kind, r.id) for r in rows]
            if len(rows) < limit:
                last = Position(now) if not rows or rows[-1].seq <= now else positions[-1]
                pending: int | None = 0
            else:
                last = positions[-1]
                pending = couch_changes.count_after(conn, last, doc_ids, COUNT_CAP)
            if last.seq < after.seq:  # a client ahead of this store (since=N from elsewhere)
                last = after
            return ChangesPage(self._docs(conn, rows), positions, last, pending)

    def newest_changes(self, limit: int, doc_ids: Sequence[str] | None, full: bool) -> ChangesPage:
        with read_transaction(self.service.engine) as conn:
            now = current_seq(conn)
            rows = couch_changes.newest_changes(conn, limit, doc_ids, full)
            positions = [Position(r.seq, r.kind, r.id) for r in rows]
            last = positions[-1] if positions else Position(now)
            return ChangesPage(self._docs(conn, rows), positions, last, None)

    def attachment(self, doc_id: str, filename: str) -> tuple[Doc, Attachment]:
        doc = self.get(doc_id)
        if doc is None:
            raise CouchError("not_found", "missing")
        try:
            found = self.service.attachment(doc_id, filename) if doc.row.kind == "task" else None
        except NotFoundError:
            found = None
        if found is None:
            raise CouchError("not_found", "Document is missing attachment")
        return doc, found

    # ---- rendering ------------------------------------------------------------------------

    def render(
        self,
        docs: Sequence[Doc],
        *,
        inline: bool = False,
        revs: bool = False,
        meta: Sequence[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """The documents as JSON; `inline`: attachments with their data; `revs`: `_revisions`."""
        wanted = [(d.row.id, a) for d in docs for a in d.attachments]
        data = self._contents([(t, a) for t, a in wanted if inline or self._digest(a) is None])
        rendered = []
        for index, doc in enumerate(docs):
            entries = {}
            for a in doc.attachments:
                content = data.get((a.task_id, a.filename))
                digest = self._digest(a) or couch_docs.digest_of(content or b"")
                entries[a.filename] = couch_docs.attachment_entry(
                    a, digest, doc.row.revision, content if inline else None
                )
            extra = dict(meta[index]) if meta else {}
            if revs:
                extra["_revisions"] = self.revisions(doc.row)
            rendered.append(couch_docs.document(doc.model, doc.rev, entries, extra))
        return rendered

    def digest(self, attachment: Attachment) -> str:
        found = self._digest(attachment)
        if found is None:
            content = self._contents([(attachment.task_id, attachment)])
            found = couch_docs.digest_of(
                content.get((attachment.task_id, attachment.filename), b"")
            )
        return found

    def _key(self, a: Attachment) -> tuple[str, str, float, int]:
        return (a.task_id, a.filename, a.created, a.size)

    def _digest(self, a: Attachment) -> str | None:
        with self._lock:
            found = self._digests.get(self._key(a))
            if found is not None:
                self._digests.move_to_end(self._key(a))
            return found

    def _contents(self, wanted: list[tuple[str, Attachment]]) -> dict[tuple[str, str], bytes]:
        """Attachment contents (read once per call); their digests are remembered."""
        if not wanted:
            return {}
        keys = [(a.task_id, a.filename) for _, a in wanted]
        with read_transaction(self.service.engine) as conn:
            data = docs_db.attachment_bytes(conn, keys)
        with self._lock:
            for _, a in wanted:
                content = data.get((a.task_id, a.filename))
                if content is not None:
                    self._digests[self._key(a)] = couch_docs.digest_of(content)
            while len(self._digests) > DIGESTS_KEPT:
                self._digests.popitem(last=False)
        return data

    def sizes(self) -> dict[str, int]:
        """The store's file size on SQLite (0 elsewhere), for the database info."""
        url = make_url(self.service.settings.database_url)
        path = Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None
        size = path.stat().st_size if path is not None and path.exists() else 0
        return {"file": size, "external": size, "active": size}
