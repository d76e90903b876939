"""Tasks' output in chunks: stored as it arrives while a task runs, read from any offset.

Offsets are positions in one attempt's whole output. Beyond its first `head` bytes only the
newest `tail` bytes of an attempt are kept (the node drops most of the rest before it is sent;
this trims what still came): so a reader finds the head, then a gap, then the tail, and the gap
is shown as one line saying how many bytes are not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select

from dirt.db.engine import Prepared
from dirt.db.schema import output_chunks
from dirt.models import OutputChunk

_TRIM = (
    delete(output_chunks)
    .where(
        output_chunks.c.task_id == bindparam("b_task"),
        output_chunks.c.attempt == bindparam("b_attempt"),
        output_chunks.c.start >= bindparam("b_head"),
        output_chunks.c.stop <= bindparam("b_keep_from"),
    )
    .execution_options(synchronize_session=False)
)


def insert_output(conn: Connection, chunks: Sequence[OutputChunk], head: int, tail: int) -> None:
    """Store chunks; of an attempt's output beyond its first `head` bytes, keep about the newest
    `tail` (whole chunks: up to one chunk more)."""
    if not chunks:
        return
    conn.execute(
        insert(output_chunks),
        [
            {
                "task_id": c.task_id,
                "attempt": c.attempt,
                "start": c.start,
                "stop": c.stop,
                "data": c.data,
            }
            for c in chunks
        ],
    )
    newest: dict[tuple[str, int], int] = {}
    for c in chunks:
        key = (c.task_id, c.attempt)
        newest[key] = max(newest.get(key, 0), c.stop)
    trims = [
        {"b_task": task, "b_attempt": attempt, "b_head": head, "b_keep_from": stop - tail}
        for (task, attempt), stop in newest.items()
        if stop - tail > head
    ]
    if trims:
        conn.execute(_TRIM, trims)


@dataclass
class Slice:
    """Stored output from an offset: (start, bytes) pieces in order, the offset after the last
    of them, and the end of all stored output of the attempt."""

    pieces: list[tuple[int, bytes]]
    next_offset: int
    end: int


def read_output(
    conn: Connection,
    task_id: str,
    attempt: int,
    offset: int,
    max_bytes: int,
    until: int | None = None,
) -> Slice:
    """Stored output of one attempt from `offset`: whole stored chunks (the first cut at
    `offset`) up to about `max_bytes` (at least one chunk), none starting at `until` or later."""
    where = and_(output_chunks.c.task_id == task_id, output_chunks.c.attempt == attempt)
    end = conn.execute(select(func.max(output_chunks.c.stop)).where(where)).scalar() or 0
    query = (
        select(output_chunks.c.start, output_chunks.c.data)
        .where(where, output_chunks.c.stop > offset)
        .order_by(output_chunks.c.stop)
    )
    if until is not None:
        query = query.where(output_chunks.c.start < until)
    pieces: list[tuple[int, bytes]] = []
    size = 0
    position = offset
    result = conn.execute(query)
    try:
        for start, data in result:
            if start < position:
                data = data[position - start :]
                start = position
            pieces.append((start, bytes(data)))
            size += len(data)
            position = start + len(data)
            if size >= max_bytes:
                break
    finally:
        result.close()
    return Slice(pieces, position if pieces else min(offset, end), end)


def has_chunk(conn: Connection, task_id: str, attempt: int, start: int, stop: int) -> bool:
    """Whether this very chunk is stored (a sender that did not hear the answer sends again)."""
    query = select(output_chunks.c.id).where(
        output_chunks.c.task_id == task_id,
        output_chunks.c.attempt == attempt,
        output_chunks.c.stop == stop,
        output_chunks.c.start == start,
    )
    return conn.execute(query.limit(1)).first() is not None


_TAIL = Prepared(
    select(output_chunks.c.start, output_chunks.c.data)
    .where(
        output_chunks.c.task_id == bindparam("b_task"),
        output_chunks.c.attempt == bindparam("b_attempt"),
    )
    .order_by(output_chunks.c.stop.desc())
)


def output_tail(conn: Connection, task_id: str, attempt: int, size: int) -> bytes:
    """The last `size` bytes stored of an attempt's output (after a gap, only what follows it)."""
    pieces: list[bytes] = []
    held = 0
    expected: int | None = None
    for row in _TAIL.fetch(conn, {"b_task": task_id, "b_attempt": attempt}):
        start, data = row["start"], bytes(row["data"])
        if expected is not None and start + len(data) != expected:
            break  # bytes dropped over the output limit: the tail starts after them
        pieces.append(data)
        held += len(data)
        expected = start
        if held >= size:
            break
    return b"".join(reversed(pieces))[-size:] if pieces else b""
