"""What change sources remember: forge deliveries taken, and files a watched folder gave."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from dirt.db.ci_schema import hook_deliveries, watched_files


def remember_delivery(conn: Connection, source: str, delivery: str, now: float) -> bool:
    """Note a webhook delivery; False when it was taken before (a replay: make nothing).

    Call it in the transaction that stores what the delivery made, so a delivery is taken
    exactly when its records are.
    """
    exists = select(hook_deliveries.c.delivery).where(
        hook_deliveries.c.source == source, hook_deliveries.c.delivery == delivery
    )
    if conn.execute(exists).first() is not None:
        return False
    try:
        with conn.begin_nested():
            conn.execute(
                insert(hook_deliveries).values(source=source, delivery=delivery, received=now)
            )
    except IntegrityError:  # another server took it between the look and the insert
        return False
    return True


def forget_deliveries(conn: Connection, before: float) -> int:
    """Drop delivery ids older than `before` (forges retry for days, not months)."""
    result = conn.execute(delete(hook_deliveries).where(hook_deliveries.c.received < before))
    return int(result.rowcount)


@dataclass(frozen=True)
class WatchedFile:
    """A file a watched folder gave: its path relative to the folder, and what it held."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    record_id: str = ""


def watched(conn: Connection, folder: str, paths: Iterable[str]) -> dict[str, list[WatchedFile]]:
    """Every content each of `paths` (relative to `folder`) was taken with, per path."""
    wanted = sorted(set(paths))
    found: dict[str, list[WatchedFile]] = {}
    for start in range(0, len(wanted), 500):
        query = select(watched_files).where(
            watched_files.c.folder == folder, watched_files.c.path.in_(wanted[start : start + 500])
        )
        for row in conn.execute(query):
            found.setdefault(row.path, []).append(
                WatchedFile(row.path, row.size, row.mtime_ns, row.sha256, row.record_id)
            )
    return found


def add_watched(conn: Connection, folder: str, item: WatchedFile, now: float) -> bool:
    """Note that `item` was taken (in the transaction that stores its record); False when
    this content at this path was taken before."""
    try:
        with conn.begin_nested():
            conn.execute(
                insert(watched_files).values(
                    folder=folder,
                    path=item.path,
                    size=item.size,
                    mtime_ns=item.mtime_ns,
                    sha256=item.sha256,
                    record_id=item.record_id,
                    seen=now,
                )
            )
    except IntegrityError:
        return False
    return True
