"""Wake-ups across processes on PostgreSQL: NOTIFY on a write, LISTEN on a connection of its own.

A write that gives dispatchers something to do (a submission, a cancel, a task back to waiting,
a node added or handed over) sends ``NOTIFY dirt_changes, 'SEQ TOPIC'`` inside its transaction,
so the notification leaves only if the write commits. Every dispatcher and web server of the
store listens and hears of it within a millisecond, where SQLite has them poll the change
sequence. Notifications are lost while a listener is disconnected, so a listener that
(re)connects tells its callbacks to read everything again (`seq` None).

Such a write also stamps its sequence value on its topic's row of `dirt_sequence` (`stamp`), next
to the sequence itself: a reader that polls (SQLite's, or one whose notifications may have been
missed) tells from one read which topics changed (`topic_seqs`), so a busy agent's progress,
which wakes no one, is no news to a dispatcher.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, func, select, update

from dirt.db.schema import sequence

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

SEQUENCE_ROW = 1  # the change sequence itself
TOPIC_ROWS = {TASKS: 2, NODES: 3}  # the value of the last write of each topic (migration 0900)
WOKEN: dict[str, tuple[str, ...]] = {TASKS: (TASKS,), NODES: (NODES,), EVERYTHING: TOPICS}
_ROWS_OF = {wake: tuple(TOPIC_ROWS[t] for t in topics) for wake, topics in WOKEN.items()}


def stamp(conn: Connection, seq: int, topic: str) -> None:
    """Note in its topic's rows that the write `seq` (of this transaction) wakes `topic`."""
    conn.execute(update(sequence).where(sequence.c.id.in_(_ROWS_OF[topic])).values(value=seq))


_TOPIC_SEQS = select(sequence.c.id, sequence.c.value).where(
    sequence.c.id.in_((SEQUENCE_ROW, *TOPIC_ROWS.values()))
)


def topic_seqs(conn: Connection) -> tuple[int, dict[str, int] | None]:
    """The change sequence's value and, by topic, that of the last write that woke it; None for
    the topics when the store has no such rows (it cannot tell them apart)."""
    rows = {row[0]: row[1] for row in conn.execute(_TOPIC_SEQS)}
    seq = int(rows.get(SEQUENCE_ROW) or 0)
    if not all(row in rows for row in TOPIC_ROWS.values()):
        return seq, None
    return seq, {topic: int(rows[row]) for topic, row in TOPIC_ROWS.items()}


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
