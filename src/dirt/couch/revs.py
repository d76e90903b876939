"""Revision ids (`_rev`) and opaque change sequences; pure functions, no I/O.

A document's `_rev` is `N-H`: N is the row's `revision` (one more on every write to the row,
kept by a trigger) and H is md5 of the store's server uuid, the document id and N. The same
content always has the same `_rev`, any write gives a new one, and every ancestor `k-H(k)` is
known without keeping history, so `revs=true` answers a full `_revisions` chain and a replica's
revision tree is one branch.

A change sequence is a position in the change feed: (store sequence value, and, when a page
ended inside one transaction's changes, the kind and id of the last change sent). It travels as
the opaque string `"{seq}-{base64url(json)}"`, like CouchDB 2's `"12-g1AAAA..."`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from dirt.couch.errors import CouchError

# How many ancestors `_revisions` lists at most (CouchDB's default revs_limit).
REVS_LIMIT = 1000
KINDS = ("record", "task")  # the order of one transaction's changes: records first

_REV = re.compile(r"^([1-9][0-9]{0,9})-([0-9a-f]{32})$")


def rev_hash(server_uuid: str, doc_id: str, revision: int) -> str:
    text = f"{server_uuid}\0{doc_id}\0{revision}"
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def rev_of(server_uuid: str, doc_id: str, revision: int) -> str:
    return f"{revision}-{rev_hash(server_uuid, doc_id, revision)}"


def parse_rev(text: Any) -> tuple[int, str] | None:
    """(generation, hash) of a well-formed `_rev`, else None."""
    if not isinstance(text, str):
        return None
    found = _REV.match(text)
    return (int(found.group(1)), found.group(2)) if found else None


def known_revision(server_uuid: str, doc_id: str, revision: int, text: Any) -> int | None:
    """The generation of `text` when it is the current `_rev` of the document or an ancestor."""
    parsed = parse_rev(text)
    if parsed is None or parsed[0] > revision:
        return None
    generation, digest = parsed
    return generation if rev_hash(server_uuid, doc_id, generation) == digest else None


def revisions(server_uuid: str, doc_id: str, revision: int) -> dict[str, Any]:
    """CouchDB's `_revisions`: the newest `REVS_LIMIT` revision hashes, newest first."""
    oldest = max(1, revision - REVS_LIMIT + 1)
    ids = [rev_hash(server_uuid, doc_id, n) for n in range(revision, oldest - 1, -1)]
    return {"start": revision, "ids": ids}


@dataclass(frozen=True, order=True)
class Position:
    """Everything up to here was sent: every change of transactions before `seq`, and of `seq`
    itself every change up to (kind, id); all of `seq` when kind is None."""

    seq: int
    kind: str | None = None
    id: str | None = None


def encode_seq(position: Position) -> str:
    parts: list[Any] = [position.seq]
    if position.kind is not None:
        parts += [KINDS.index(position.kind), position.id]
    raw = json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return f"{position.seq}-" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_seq(value: Any, now: int) -> Position:
    """A sequence from a client: an integer, "now", or a string made by `encode_seq`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Position(value)
    if isinstance(value, list | tuple) and len(value) == 1:  # CouchDB 1.x clients send [N]
        return parse_seq(value[0], now)
    if isinstance(value, str):
        text = value.strip()
        if text == "now":
            return Position(now)
        if text.isdigit():
            return Position(int(text))
        head, _, token = text.partition("-")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            parts = json.loads(raw)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            parts = None
        if isinstance(parts, list) and head.isdigit() and parts and parts[0] == int(head):
            if len(parts) == 1:
                return Position(int(head))
            if (
                len(parts) == 3
                and parts[1] in (0, 1)
                and isinstance(parts[2], str)
                and not isinstance(parts[1], bool)
            ):
                return Position(int(head), KINDS[parts[1]], parts[2])
    raise CouchError(
        "bad_request",
        f"Malformed sequence supplied in 'since' parameter: {str(value)[:80]!r} "
        "(use 0, now, or a seq this server sent)",
    )
