"""The reads a replicator makes of a source: `_revs_diff`, `_bulk_get` and `open_revs`.

dirt keeps only each document's newest content, so an older revision is "missing" unless the
client asks for `latest` (then it gets the newest, whose `_revisions` contain the one it named).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dirt.couch.revs import parse_rev
from dirt.couch.store import CouchStore, Doc


def revs_diff(store: CouchStore, wanted: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Of each document's revisions, those this store does not have."""
    docs = store.get_many(wanted, full=False)
    answer: dict[str, dict[str, Any]] = {}
    for doc_id, revs in wanted.items():
        doc = docs.get(doc_id)
        missing = [r for r in revs if doc is None or store.known(doc.row, r) is None]
        if not missing:
            continue
        entry: dict[str, Any] = {"missing": missing}
        if doc is not None and any(
            (parsed := parse_rev(r)) is not None and parsed[0] > doc.row.revision for r in missing
        ):
            entry["possible_ancestors"] = [doc.rev]
        answer[doc_id] = entry
    return answer


def _serves(store: CouchStore, doc: Doc, rev: Any, latest: bool) -> bool:
    return rev is None or rev == doc.rev or (latest and store.known(doc.row, rev) is not None)


def bulk_get(
    store: CouchStore,
    requests: Sequence[dict[str, Any]],
    *,
    revs: bool,
    latest: bool,
    inline: bool,
) -> list[dict[str, Any]]:
    """CouchDB's `_bulk_get` results, one per request, in order."""
    ids = [r["id"] for r in requests if isinstance(r.get("id"), str)]
    docs = store.get_many(ids)
    served = [
        docs[r["id"]]
        for r in requests
        if r.get("id") in docs and _serves(store, docs[r["id"]], r.get("rev"), latest)
    ]
    rendered = iter(store.render(served, inline=inline, revs=revs))
    results = []
    for request in requests:
        doc_id, rev = request.get("id"), request.get("rev")
        doc = docs.get(doc_id) if isinstance(doc_id, str) else None
        if doc is not None and _serves(store, doc, rev, latest):
            results.append({"id": doc_id, "docs": [{"ok": next(rendered)}]})
            continue
        error = {
            "id": doc_id,
            "rev": rev if rev is not None else "undefined",
            "error": "not_found",
            "reason": "missing" if doc_id is not None else "no document id given",
        }
        results.append({"id": doc_id, "docs": [{"error": error}]})
    return results


def open_revs(
    store: CouchStore,
    doc: Doc,
    wanted: list[Any] | None,
    *,
    revs: bool,
    latest: bool,
    inline: bool,
) -> list[dict[str, Any]]:
    """`GET /{db}/{id}?open_revs=...`: `wanted` None means every leaf (dirt has one)."""
    rendered = store.render([doc], inline=inline, revs=revs)[0]
    if wanted is None:
        return [{"ok": rendered}]
    answer: list[dict[str, Any]] = []
    sent = False
    for rev in wanted:
        if _serves(store, doc, rev, latest):
            if not sent:  # several ancestors named with latest=true: the leaf once
                answer.append({"ok": rendered})
                sent = True
        else:
            answer.append({"missing": rev})
    return answer
