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
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from dirt.blobs import BlobStore
from dirt.config import Settings
from dirt.db import audit as audit_db
from dirt.db import migrate
from dirt.db import notify as notify_db
from dirt.db.engine import current_seq, make_engine, next_seq, read_transaction, write_transaction
from dirt.errors import StoreUnavailableError
from dirt.models import Actor
from dirt.project import TaskModules

log = logging.getLogger("dirt")

T = TypeVar("T")

# What a write tells other processes (see dirt.db.notify): tasks to run or cancel, or nodes
# and dispatchers changed; None for writes no one waits for (a dispatcher's own progress).
TASKS = notify_db.TASKS
NODES = notify_db.NODES
EVERYTHING = notify_db.EVERYTHING
_ALL_TOPICS = frozenset(notify_db.TOPICS)


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
    """Names this dispatcher in the claims it makes: host, pid and a random part (at most 64
    characters, the width of a claim)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def machine_id() -> str | None:
    """Where a pid names one process: this boot of this machine and this pid namespace (two
    containers on one host share the boot, not the namespace). None where /proc cannot say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"


@contextmanager
def _reachable() -> Iterator[None]:
    """Store errors that say the store is away (not that a statement is wrong) become
    StoreUnavailableError, which callers may wait out and retry."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise StoreUnavailableError(f"the store is unreachable: {_first_line(exc)}") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailableError(f"the store is unreachable: {_first_line(exc)}") from exc
        raise


def _first_line(exc: sa_exc.DBAPIError) -> str:
    text = str(exc.orig or exc).strip()
    return text.splitlines()[0] if text else type(exc.orig or exc).__name__


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
        # By topic, the last write known here that woke it (see `changed_elsewhere`).
        self._known_topics = dict.fromkeys(_ALL_TOPICS, 0)
        self._notify = notify_db.supported(self.engine)
        self._watchers: list[notify_db.OnNotify] = []
        self._listener: notify_db.Listener | None = None
        # SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in
        # growing steps (its busy handler) before it looks again: the threads of one process
        # (a web process serving many agents) queue here instead, and each gets the lock as
        # soon as the one before commits.
        self._write_lock: AbstractContextManager[object] = (
            threading.RLock() if self.engine.dialect.name == "sqlite" else nullcontext()
        )

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        self.engine.dispose()

    def _write(
        self,
        work: Callable[[Connection, int], T],
        action: str | None = None,
        target: str | Callable[[T], str] = "",
        *,
        wake: str | None = TASKS,
        sequenced: bool = True,
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

        `wake` tells every dispatcher and web server of the store at once (NOTIFY on PostgreSQL;
        SQLite's readers poll the sequence): TASKS when there is work to do, NODES when nodes
        or dispatchers changed, None for writes no one needs to hear of at once. A write that
        is not `sequenced` (a lease renewal) stamps nothing, takes no sequence value (`seq` is
        0) and wakes no one.
        """
        actor = _current_actor(action)
        with self._write_lock, _reachable(), write_transaction(self.engine) as conn:
            seq = next_seq(conn) if sequenced else 0
            result = work(conn, seq)
            if actor is not None:
                what = target(result) if callable(target) else target
                audit_db.insert_entry(
                    conn, time.time(), seq, actor, action or "write", what or (actor.request or "")
                )
            if sequenced and wake is not None:
                notify_db.stamp(conn, seq, wake)
                if self._notify:
                    notify_db.notify(conn, seq, wake)
        if sequenced:
            self._committed(seq, wake)
        return result

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A consistent snapshot for reading several tables."""
        with _reachable(), read_transaction(self.engine) as conn:
            yield conn

    # ---- change notification -----------------------------------------------------------------

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """Call `callback(seq)` after every write this process commits."""
        self._listeners.append(callback)

    def _committed(self, seq: int, wake: str | None = None) -> None:
        with self._seq_lock:
            # Each commit takes the next value, one at a time: only when ours follows the last
            # one known here did nobody else write in between. Otherwise another process's
            # write (a `dirt submit`) sits below ours, and `changed_elsewhere` must still see it.
            if seq == self._known_seq + 1:
                self._known_seq = seq
                for topic in notify_db.WOKEN.get(wake or "", ()):
                    self._known_topics[topic] = seq
        for callback in list(self._listeners):
            try:
                callback(seq)
            except Exception:
                log.exception("change listener failed")

    def watch(self, callback: notify_db.OnNotify) -> bool:
        """Call `callback(seq, topic)` on a thread of the service when any process commits a
        write that wakes (see `_write`), and `callback(None, None)` when notifications may
        have been missed (after the store was unreachable). False when the store cannot push
        (SQLite): then the caller polls `changed_elsewhere`."""
        if not self._notify:
            return False
        self._watchers.append(callback)
        if self._listener is None:
            self._listener = notify_db.Listener(self.engine, self._notified)
            self._listener.start()
        return True

    def pushing(self) -> bool:
        """True while the store's notifications reach this process (see `watch`)."""
        return self._listener is not None and self._listener.connected.is_set()

    def _notified(self, seq: int | None, topic: str | None) -> None:
        for callback in list(self._watchers):
            callback(seq, topic)

    def current_seq(self) -> int:
        with self._read() as conn:
            return current_seq(conn)

    def changed_elsewhere(self) -> frozenset[str]:
        """What other processes' writes since this one last looked woke (see `_write`): TASKS,
        NODES, both, or nothing (none, or only writes no one waits for). One indexed read."""
        with self._read() as conn:
            seq, topics = notify_db.topic_seqs(conn)
        with self._seq_lock:
            if topics is None:  # a store that cannot tell: any write may be news
                news = _ALL_TOPICS if seq != self._known_seq else frozenset()
            else:
                news = frozenset(t for t, at in topics.items() if at > self._known_topics[t])
                for topic, at in topics.items():
                    self._known_topics[topic] = max(self._known_topics[topic], at)
            self._known_seq = max(self._known_seq, seq)
        return news
