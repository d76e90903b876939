"""The blob store: attachment contents outside the database, one file per distinct content,
named by its sha256.

Layout: ``ROOT/ab/abcdef...`` (the first two hex digits as a folder), and ``ROOT/tmp/`` for
uploads in progress. A blob appears under its name only when it is complete: it is written to
a temporary file in ``tmp/`` (same file system), flushed to disk (fsync), then renamed into
place, and the folder is synced. So a reader, another master sharing the folder, or a master
restarted after a crash never sees a partial blob; an upload cut short (its node lost, the
master killed) leaves at most a file in ``tmp/``, which is removed when the upload is aborted or,
if nobody could abort it, by `remove_stale` once it has not been written for an hour. Two tasks
attaching the same bytes store them once.

Blobs are never changed once written, and not deleted by dirt: the database rows that name them
(attachments) may be deleted, and the same content may be named by several rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

STALE_AFTER = 3600.0  # seconds without a write after which an upload in tmp/ is abandoned
HEX = frozenset("0123456789abcdef")


class BlobError(OSError):
    """The blob store cannot be read or written (its folder, the disk)."""


class UploadGap(ValueError):
    """A chunk of a resumable upload starts past its end: `size` is where the next must start."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the upload holds {size} bytes; send from byte {size}")
        self.size = size


def valid_sha256(sha: str) -> bool:
    return len(sha) == 64 and set(sha) <= HEX


class BlobStore:
    """Content-addressed files under `root` (made when first written)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        if not valid_sha256(sha):
            raise ValueError(f"not a sha256: {sha!r}")
        return self.root / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def open(self, sha: str) -> BinaryIO:
        """The blob for reading; BlobError when it is missing."""
        try:
            return self.path(sha).open("rb")
        except FileNotFoundError:
            raise BlobError(
                f"blob {sha} is missing from the blob store {self.root} "
                "(was the folder moved, or [storage] blobs changed?)"
            ) from None

    def writer(self) -> BlobWriter:
        """A new upload; `commit` it to make the blob appear, or `abort` it."""
        return BlobWriter(self)

    def put(self, data: bytes) -> tuple[str, int]:
        """Store `data` (small contents held in memory anyway); returns (sha256, size)."""
        writer = self.writer()
        try:
            writer.write(data)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    # ---- resumable uploads: one file in tmp/ written by many requests -------------------------

    def _upload_path(self, name: str) -> Path:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"not an upload name: {name!r}")
        return self.root / "tmp" / f"{name}.upload"

    def append(self, name: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset` of the resumable upload `name`; returns its size after.

        Bytes it holds already (a chunk sent again after a lost answer) are not written twice;
        a chunk starting past its end raises UploadGap. Appends to one upload may come from
        several processes (web workers): each holds the file's lock while it writes.
        """
        path = self._upload_path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BlobError(f"cannot write to the blob store {self.root}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if offset > size:
                raise UploadGap(size)
            view = memoryview(data)[size - offset :] if offset < size else memoryview(data)
            position = max(size, offset)
            while view:
                written = os.pwrite(fd, view, position)
                view, position = view[written:], position + written
            return max(size, offset + len(data))
        except OSError as exc:
            raise BlobError(f"cannot write to the blob store {self.root}: {exc}") from exc
        finally:
            os.close(fd)

    def upload_size(self, name: str) -> int:
        try:
            return self._upload_path(name).stat().st_size
        except FileNotFoundError:
            return 0

    def adopt(self, name: str) -> tuple[str, int]:
        """Make the resumable upload `name` a blob, moved into place (an empty blob when
        nothing was sent); returns (sha256, size)."""
        path = self._upload_path(name)
        digest = hashlib.sha256()
        size = 0
        try:
            with path.open("rb") as upload:
                while chunk := upload.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                os.fsync(upload.fileno())
        except FileNotFoundError:
            return self.put(b"")
        except OSError as exc:
            raise BlobError(f"cannot read the upload {path}: {exc}") from exc
        sha = digest.hexdigest()
        target = self.path(sha)
        try:
            if target.is_file():
                path.unlink()  # the same content is stored already
                return sha, size
            os.chmod(path, 0o644)
            target.parent.mkdir(exist_ok=True)
            os.replace(path, target)
            _sync_folder(target.parent)
        except OSError as exc:
            raise BlobError(f"cannot write to the blob store {self.root}: {exc}") from exc
        return sha, size

    def discard(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._upload_path(name).unlink()

    def remove_stale(self, older_than: float = STALE_AFTER) -> int:
        """Remove uploads in tmp/ nobody has written to for `older_than` seconds (left by a
        master that died in the middle of one); returns how many."""
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.root / "tmp"))
        except FileNotFoundError:
            return 0
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime > older_than:
                    os.unlink(entry.path)
                    removed += 1
        return removed


class BlobWriter:
    """One upload in progress: a temporary file and the running sha256 of what was written."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        tmp = store.root / "tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=tmp, suffix=".part")
        except OSError as exc:
            raise BlobError(f"cannot write to the blob store {store.root}: {exc}") from exc
        self.fd = fd
        self.temp = name
        self.hash = hashlib.sha256()
        self.size = 0
        self.done = False

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.hash.update(view)
        self.size += len(view)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise BlobError(f"cannot write to the blob store {self.store.root}: {exc}") from exc

    def commit(self) -> tuple[str, int]:
        """Make the blob appear (if no blob of the same content exists); returns (sha, size)."""
        sha = self.hash.hexdigest()
        target = self.store.path(sha)
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.done = True
            if target.is_file():
                os.unlink(self.temp)  # the same content is stored already
                return sha, self.size
            os.chmod(self.temp, 0o644)
            target.parent.mkdir(exist_ok=True)
            os.replace(self.temp, target)
            _sync_folder(target.parent)
        except OSError as exc:
            self.abort()
            raise BlobError(f"cannot write to the blob store {self.store.root}: {exc}") from exc
        return sha, self.size

    def abort(self) -> None:
        """Forget the upload: its temporary file goes, no blob appears."""
        if not self.done:
            self.done = True
            with contextlib.suppress(OSError):
                os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
