"""Wake-ups across processes on PostgreSQL: NOTIFY on a write, LISTEN on a connection of its own.

A write that gives dispatchers something to do (a submission, a cancel, a task back to waiting,
a node added or handed over) sends ``NOTIFY dirt_changes, 'SEQ TOPIC'`` inside its transaction,
so the notification leaves only if the write commits. Every dispatcher and web server of the
store listens and hears of it within a millisecond, where SQLite has them poll the change
sequence. Notifications are lost while a listener is disconnected, so a listener that
(re)connects tells its callbacks to read everything again (`seq` None).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, func, select

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("dirt")

CHANNEL = "dirt_changes"
# What a write changed, as far as a dispatcher cares: tasks to run (or cancel), or nodes and
# dispatchers (leases, handovers, nodes added, enabled or removed).
TASKS = "tasks"
NODES = "nodes"
EVERYTHING = "all"  # both at once (a takeover requeues tasks and frees nodes)
TOPICS = (TASKS, NODES)

OnNotify = Callable[[int | None, str | None], None]  # (seq, topic); (None, None): resync


def supported(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def notify(conn: Connection, seq: int, topic: str) -> None:
    """Tell every listener of the store, when this transaction commits."""
    conn.execute(select(func.pg_notify(CHANNEL, f"{seq} {topic}")))


def parse(payload: str) -> tuple[int | None, str | None]:
    """(seq, topic) of a notification; topic None: anything may have changed."""
    seq, _, topic = payload.partition(" ")
    return (int(seq) if seq.isdigit() else None), (topic if topic in TOPICS else None)


class Listener:
    """LISTENs on a connection of its own, on a thread of its own, calling `on_notify` for each
    notification; reconnects with backoff when the connection drops (the store restarts)."""

    BACKOFF_MAX = 2.0

    def __init__(self, engine: Engine, on_notify: OnNotify) -> None:
        self.engine = engine
        self.on_notify = on_notify
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dirt-listen", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        # The connection SQLAlchemy would open for this engine, outside its pool.
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        conn = psycopg.connect(*args, **{**kwargs, "autocommit": True, "connect_timeout": 5})
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def _run(self) -> None:
        backoff = 0.0
        down = False
        while not self._stopping.is_set():
            conn = None
            try:
                conn = self._connect()
                self.connected.set()
                if down:
                    log.info("listening for changes again")
                    down = False
                backoff = 0.0
                self._call(None, None)  # whatever was sent while we did not listen
                while not self._stopping.is_set():
                    for note in conn.notifies(timeout=0.5):
                        self._call(*parse(note.payload))
            except Exception as exc:
                self.connected.clear()
                if not down:
                    down = True
                    reason = str(exc).strip().splitlines()
                    log.warning(
                        "listening for changes failed: %s; retrying with backoff",
                        reason[0] if reason else type(exc).__name__,
                    )
                backoff = min(self.BACKOFF_MAX, backoff * 2 if backoff else 0.1)
                self._stopping.wait(backoff)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _call(self, seq: int | None, topic: str | None) -> None:
        try:
            self.on_notify(seq, topic)
        except Exception:
            log.exception("change notification handler failed")
