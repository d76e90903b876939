"""What every part of the service shares: the store, the one write helper, change listeners."""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TypeVar

from sqlalchemy import Connection, Engine

from dirt.blobs import BlobStore
from dirt.config import Settings
from dirt.db import audit as audit_db
from dirt.db import migrate
from dirt.db.engine import current_seq, make_engine, next_seq, read_transaction, write_transaction
from dirt.models import Actor
from dirt.project import TaskModules

log = logging.getLogger("dirt")

T = TypeVar("T")


# Who the writes of the current request are made for: set by the web for each request (see
# dirt.web.audit), unset in the CLI and the dispatcher. Resolved when a write happens.
_acting: ContextVar[Callable[[], Actor] | None] = ContextVar("dirt_acting", default=None)


@contextmanager
def acting(resolve: Callable[[], Actor]) -> Iterator[None]:
    """Writes made inside are audited as made by `resolve()` (called once per write)."""
    token = _acting.set(resolve)
    try:
        yield
    finally:
        _acting.reset(token)


def local_actor() -> Actor:
    """The user of this process: who a CLI command (or a script using the store) acts for."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        name = f"uid {os.getuid()}"
    return Actor(name, "local")


def _current_actor(action: str | None) -> Actor | None:
    """Who to audit a write as: the web request's actor, else the local user for a user
    action; None for the dispatcher's own writes (no action, no request)."""
    resolve = _acting.get()
    if resolve is not None:
        try:
            return resolve()
        except Exception:  # the write goes on; the row says the actor was not known
            log.exception("could not tell who made a write")
            return Actor("unknown", "web")
    return local_actor() if action is not None else None


def new_master_id() -> str:
    """Names this dispatcher in the claims it makes: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ServiceBase:
    """The store of one project, and the one way to write to it (`_write`)."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.database_url)
        migrate.upgrade(self.engine)
        self.modules = TaskModules(settings.tasks_dir)
        self.blobs = BlobStore(settings.blobs_path)
        self.master_id = new_master_id()
        self._listeners: list[Callable[[int], None]] = []
        self._seq_lock = threading.Lock()
        self._known_seq = 0
        # SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in
        # growing steps (its busy handler) before it looks again: the threads of one process
        # (a web process serving many agents) queue here instead, and each gets the lock as
        # soon as the one before commits.
        self._write_lock: AbstractContextManager[object] = (
            threading.RLock() if self.engine.dialect.name == "sqlite" else nullcontext()
        )

    def close(self) -> None:
        self.engine.dispose()

    def _write(
        self,
        work: Callable[[Connection, int], T],
        action: str | None = None,
        target: str | Callable[[T], str] = "",
    ) -> T:
        """Run `work(conn, seq)` in one write transaction and return what it returns.

        `seq` is the next value of the change sequence: stamp it on every row `work` writes, so
        the change feed and other processes see the write. Everything `work` writes commits
        together or not at all (an exception rolls it all back): whatever must follow from a
        change (an outbox row for a finished task, a lease renewal) is written inside `work`.
        Listeners hear of the write only once it is committed.

        A user's write names its `action` and `target` (text, or made from `work`'s result):
        it is audited in the same transaction, as made by the web request's actor or the local
        user. Any write made while serving a web request is audited, named or not.
        """
        actor = _current_actor(action)
        with self._write_lock, write_transaction(self.engine) as conn:
            seq = next_seq(conn)
            result = work(conn, seq)
            if actor is not None:
                what = target(result) if callable(target) else target
                audit_db.insert_entry(
                    conn, time.time(), seq, actor, action or "write", what or (actor.request or "")
                )
        self._committed(seq)
        return result

    def _read(self) -> AbstractContextManager[Connection]:
        """A consistent snapshot for reading several tables."""
        return read_transaction(self.engine)

    # ---- change notification -----------------------------------------------------------------

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """Call `callback(seq)` after every write this process commits."""
        self._listeners.append(callback)

    def _committed(self, seq: int) -> None:
        with self._seq_lock:
            self._known_seq = max(self._known_seq, seq)
        for callback in list(self._listeners):
            try:
                callback(seq)
            except Exception:
                log.exception("change listener failed")

    def current_seq(self) -> int:
        with self._read() as conn:
            return current_seq(conn)

    def changed_elsewhere(self) -> bool:
        """True when another process wrote since this one last looked (one indexed read)."""
        seq = self.current_seq()
        with self._seq_lock:
            changed = seq != self._known_seq
            self._known_seq = max(self._known_seq, seq)
        return changed
