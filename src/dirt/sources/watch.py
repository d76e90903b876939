"""Watched folders (`dirt watch DIR -t TASK [--pattern GLOB]`): one record per new file.

A file is taken once it stops growing: its size and modification time are the same on two
looks in a row (and, with `min_age`, it is that old). Hidden files and folders (a leading dot,
as rsync and many writers use for files in progress) are never taken. What was taken is
remembered by a `SeenFiles` (the store's, in `dirt watch`), by path and content: the same
file is never taken twice, across restarts; a path rewritten with new content is new data.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from dirt.db import sources as sources_db
from dirt.db.engine import read_transaction
from dirt.db.sources import WatchedFile
from dirt.documents.submission import MAX_ID_LENGTH

log = logging.getLogger("dirt.sources")

HASH_CHUNK = 1 << 20
_NOT_IN_IDS = str.maketrans({c: "_" for c in "\\?#%"} | {"/": ":"})


@dataclass(frozen=True)
class NewFile:
    """A file ready to be taken: where it is and what it holds."""

    path: Path  # absolute
    relative: str  # to the watched folder, with "/" separators
    size: int
    mtime_ns: int
    sha256: str

    @property
    def record_id(self) -> str:
        """`run7:a.dat@<12 hex of sha256>`: readable, and different for different content."""
        suffix = "@" + self.sha256[:12]
        name = "".join(c if c.isprintable() else "_" for c in self.relative.translate(_NOT_IN_IDS))
        return name.strip()[-(MAX_ID_LENGTH - len(suffix)) :].strip() + suffix

    def watched(self) -> WatchedFile:
        return WatchedFile(self.relative, self.size, self.mtime_ns, self.sha256, self.record_id)


class SeenFiles(Protocol):
    """What a folder gave before: every content each path was taken with."""

    def taken(self, relatives: Sequence[str]) -> dict[str, list[WatchedFile]]: ...


class MemorySeenFiles:
    """A `SeenFiles` that lasts as long as the process (for tests and one-shot scans)."""

    def __init__(self) -> None:
        self.files: dict[str, list[WatchedFile]] = {}

    def taken(self, relatives: Sequence[str]) -> dict[str, list[WatchedFile]]:
        return {r: list(self.files[r]) for r in relatives if r in self.files}

    def add(self, item: WatchedFile) -> None:
        self.files.setdefault(item.path, []).append(item)


class StoreSeenFiles:
    """The store's memory of one folder (rows written with each file's record)."""

    def __init__(self, engine: Engine, folder: Path | str) -> None:
        self.engine = engine
        self.folder = str(Path(folder).resolve())

    def taken(self, relatives: Sequence[str]) -> dict[str, list[WatchedFile]]:
        with read_transaction(self.engine) as conn:
            return sources_db.watched(conn, self.folder, relatives)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class FolderScanner:
    """Looks at a folder again and again; `scan()` returns the files new since it last did.

    Call `scan` every few seconds. A file returned is counted as taken by this scanner; if
    storing its record fails, `forget` it so the next scan offers it again.
    """

    def __init__(
        self,
        folder: Path | str,
        seen: SeenFiles,
        *,
        pattern: str = "*",
        min_age: float = 0.0,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.seen = seen
        self.pattern = pattern
        self.min_age = min_age
        self._last_look: dict[str, tuple[int, int]] = {}
        self._decided: dict[str, tuple[int, int]] = {}  # taken or known, as it was then

    def matches(self, relative: str) -> bool:
        """A pattern with a "/" is matched against the relative path, else the file name."""
        name = relative if "/" in self.pattern else relative.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(name, self.pattern)

    def _files(self) -> Iterator[tuple[str, os.stat_result]]:
        for root, dirs, names in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                path = Path(root, name)
                relative = path.relative_to(self.folder).as_posix()
                if not self.matches(relative):
                    continue
                try:
                    info = path.stat()
                except OSError:  # gone between the listing and the look
                    continue
                if path.is_file():
                    yield relative, info

    def scan(self, now: float | None = None) -> list[NewFile]:
        """The files that stopped growing since the last look and were never taken."""
        if not self.folder.is_dir():
            raise FileNotFoundError(f"watched folder {self.folder} does not exist")
        now = time.time() if now is None else now
        looks: dict[str, tuple[int, int]] = {}
        stable: list[str] = []
        for relative, info in self._files():
            look = (info.st_size, info.st_mtime_ns)
            looks[relative] = look
            old_enough = now - info.st_mtime_ns / 1e9 >= self.min_age
            unchanged = self._last_look.get(relative) == look
            if unchanged and old_enough and self._decided.get(relative) != look:
                stable.append(relative)
        self._last_look = looks
        for relative in set(self._decided) - set(looks):
            del self._decided[relative]  # deleted: if it comes back, it is looked at again
        return self._new(stable)

    def _new(self, stable: list[str]) -> list[NewFile]:
        if not stable:
            return []
        before = self.seen.taken(stable)
        found = []
        for relative in stable:
            size, mtime_ns = self._last_look[relative]
            previous = before.get(relative, [])
            if any(p.size == size and p.mtime_ns == mtime_ns for p in previous):
                self._decided[relative] = (size, mtime_ns)
                continue
            path = self.folder / relative
            try:
                digest = file_sha256(path)
                after = path.stat()
            except OSError as exc:
                log.warning("watched file %s could not be read: %s", path, exc)
                continue
            if (after.st_size, after.st_mtime_ns) != (size, mtime_ns):
                self._last_look[relative] = (after.st_size, after.st_mtime_ns)
                continue  # it changed while it was read: look again next time
            self._decided[relative] = (size, mtime_ns)
            if any(p.sha256 == digest for p in previous):
                continue  # touched, not changed
            found.append(NewFile(path, relative, size, mtime_ns, digest))
        return found

    def forget(self, item: NewFile) -> None:
        """Offer `item` again on the next scan (its record was not stored)."""
        self._decided.pop(item.relative, None)


def file_documents(item: NewFile, tasks: Sequence[str]) -> list[dict[str, Any]]:
    """The record of a new file (fields path, size, sha256) and a task per name, with kwargs
    {"path"}."""
    record: dict[str, Any] = {
        "_id": item.record_id,
        "type": "record",
        "description": item.relative,
        "path": str(item.path),
        "size": item.size,
        "sha256": item.sha256,
    }
    docs = [record]
    for name in tasks:
        docs.append(
            {
                "type": "task",
                "record_id": item.record_id,
                "name": name,
                "kwargs": {"path": str(item.path)},
            }
        )
    return docs
