"""The queue: record turn sequences, dispatchers' announcements, and the counts readers need to
say where a waiting task stands. Every read here is an index seek or a bounded keyset scan."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from dirt.db.engine import Prepared
from dirt.db.records import epoch_seconds
from dirt.db.schema import dispatcher_views, record_states, record_turns, records, tasks
from dirt.db.tasks import WAITING, in_order
from dirt.models import DispatcherInfo, NodeRuntime, Record, TaskState

# ---- turn sequences ----------------------------------------------------------------------------


def next_slots(conn: Connection, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The stored next slot of each (record id, priority) that has one."""
    wanted = list(set(keys))
    found: dict[tuple[str, int], int] = {}
    for start in range(0, len(wanted), 300):
        chunk = wanted[start : start + 300]
        query = select(record_turns).where(
            tuple_(record_turns.c.record_id, record_turns.c.priority).in_(chunk)
        )
        for row in conn.execute(query):
            found[(row.record_id, row.priority)] = int(row.next_slot)
    return found


def has_waiting(conn: Connection, record_id: str, priority: int) -> bool:
    """Whether the record has a waiting task at `priority` (index on record_id, state)."""
    query = (
        select(tasks.c.id)
        .where(
            tasks.c.record_id == record_id,
            tasks.c.state == TaskState.WAITING.value,
            tasks.c.priority == priority,
        )
        .limit(1)
    )
    return conn.execute(query).first() is not None


def save_next_slots(conn: Connection, slots: Mapping[tuple[str, int], int]) -> None:
    if not slots:
        return
    rows = [{"record_id": r, "priority": p, "next_slot": n} for (r, p), n in slots.items()]
    upsert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(record_turns)
    conn.execute(
        upsert.on_conflict_do_update(
            index_elements=["record_id", "priority"],
            set_={"next_slot": upsert.excluded.next_slot},
        ),
        rows,
    )


def first_turn(conn: Connection, priority: int) -> int | None:
    """The lowest turn among the tasks waiting at `priority` (one index seek)."""
    query = in_order(select(tasks.c.turn).where(WAITING, tasks.c.priority == priority), "fair")
    query = query.limit(1)
    found = conn.execute(query).scalar_one_or_none()
    return None if found is None else int(found)


def records_of(conn: Connection, ids: Iterable[str]) -> dict[str, Record]:
    """Records by id (without their sequence value)."""
    wanted = list(set(ids))
    found: dict[str, Record] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = select(
            records.c.id, records.c.description, records.c.created, records.c.extra
        ).where(records.c.id.in_(chunk))
        for row in conn.execute(query):
            found[row.id] = Record(
                row.id, row.description, epoch_seconds(row.created), row.extra or {}
            )
    return found


# ---- dispatchers -------------------------------------------------------------------------------


def _view_doc(info: DispatcherInfo) -> dict[str, Any]:
    return {
        "nodes": {
            a: [int(n.online), int(n.accepting), n.capacity, n.running]
            for a, n in info.nodes.items()
        },
        # JSON keys are strings: priorities are written as text.
        "heads": {a: {str(p): t for p, t in by.items()} for a, by in info.heads.items()},
    }


def _info_from_row(row: Any) -> DispatcherInfo:
    view = row.view or {}
    return DispatcherInfo(
        id=row.id,
        host=row.host,
        pid=row.pid,
        started=row.started,
        last_seen=row.last_seen,
        stopped=row.stopped,
        order=row.dispatch_order,
        nodes={
            a: NodeRuntime(bool(v[0]), bool(v[1]), int(v[2]), int(v[3]))
            for a, v in (view.get("nodes") or {}).items()
        },
        heads={
            a: {int(p): int(t) for p, t in by.items()}
            for a, by in (view.get("heads") or {}).items()
        },
    )


def register_dispatcher(conn: Connection, info: DispatcherInfo, keep_after: float) -> None:
    """Announce a dispatcher; rows of dispatchers gone before `keep_after` are dropped (the
    latest gone one stays, so readers can say since when none ran)."""
    # The same master may run a dispatcher again (a restart in one process): one row each.
    conn.execute(delete(dispatcher_views).where(dispatcher_views.c.id == info.id))
    latest = conn.execute(select(func.max(dispatcher_views.c.last_seen))).scalar_one_or_none()
    conn.execute(
        delete(dispatcher_views).where(
            dispatcher_views.c.last_seen < keep_after,
            dispatcher_views.c.last_seen < (latest if latest is not None else keep_after),
        )
    )
    conn.execute(
        insert(dispatcher_views).values(
            id=info.id,
            host=info.host,
            pid=info.pid,
            started=info.started,
            last_seen=info.last_seen,
            stopped=info.stopped,
            dispatch_order=info.order,
            view=_view_doc(info),
        )
    )


_ANNOUNCE = Prepared(
    update(dispatcher_views)
    .where(dispatcher_views.c.id == bindparam("b_id"))
    .values(
        last_seen=bindparam("b_seen"), view=bindparam("b_view", type_=dispatcher_views.c.view.type)
    ),
    json_params=["b_view"],
)


def announce(conn: Connection, info: DispatcherInfo) -> None:
    """The heartbeat and the view of a running dispatcher (a statement built once: while tasks
    move it is written several times a second)."""
    _ANNOUNCE.run(conn, [{"b_id": info.id, "b_seen": info.last_seen, "b_view": _view_doc(info)}])


def stop_dispatcher(conn: Connection, dispatcher_id: str, now: float) -> None:
    conn.execute(
        update(dispatcher_views)
        .where(dispatcher_views.c.id == dispatcher_id)
        .values(last_seen=now, stopped=now)
    )


def list_dispatchers(conn: Connection) -> list[DispatcherInfo]:
    query = select(dispatcher_views).order_by(dispatcher_views.c.last_seen.desc())
    return [_info_from_row(row) for row in conn.execute(query)]


# ---- where a waiting task stands ---------------------------------------------------------------


def front(conn: Connection, order: str, priority: int, limit: int) -> list[str]:
    """Ids of the first `limit` waiting tasks at `priority`, in `order` (a keyset scan)."""
    query = in_order(select(tasks.c.id).where(WAITING, tasks.c.priority == priority), order)
    return list(conn.execute(query.limit(limit)).scalars())


def waiting_above(conn: Connection, priority: int, cap: int) -> int:
    """How many tasks wait at a higher priority than `priority`, counted up to `cap`."""
    inner = select(tasks.c.id).where(WAITING, tasks.c.priority > priority).limit(cap).subquery()
    return int(conn.execute(select(func.count()).select_from(inner)).scalar_one())


# ---- the queue view ----------------------------------------------------------------------------


@dataclass
class QueueRow:
    """A record with waiting or running tasks."""

    record: Record
    waiting: int
    running: int


def queue_rows(conn: Connection, limit: int) -> tuple[list[QueueRow], int, int, int]:
    """Records with waiting or running tasks, oldest first (the order records take within a
    round), at most `limit`; and in all: records in the queue, waiting tasks, running tasks."""
    active = (TaskState.WAITING.value, TaskState.RUNNING.value)
    counts: dict[str, dict[str, int]] = {}
    created: dict[str, float] = {}
    query = select(
        record_states.c.record_id, record_states.c.state, record_states.c.n, record_states.c.created
    ).where(record_states.c.state.in_(active))
    for rid, state, n, when in conn.execute(query):
        counts.setdefault(rid, {})[state] = int(n)
        created[rid] = when
    ids = sorted(counts, key=lambda r: (created[r], r))
    shown = records_of(conn, ids[:limit])
    totals = {s: sum(c.get(s, 0) for c in counts.values()) for s in active}
    rows = [
        QueueRow(
            shown[r],
            counts[r].get(TaskState.WAITING.value, 0),
            counts[r].get(TaskState.RUNNING.value, 0),
        )
        for r in ids[:limit]
        if r in shown
    ]
    return rows, len(ids), totals[active[0]], totals[active[1]]
