"""The order waiting tasks are offered in, on SQLite and PostgreSQL: fair (records take turns,
weighted by `share`) and fifo; priority first in both. Tasks move as production moves them:
submitted, reserved and started through `dispatch`, retried, requeued."""

from __future__ import annotations

import time
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, text

from dirt.config import Settings
from dirt.db.engine import make_engine, write_transaction
from dirt.db.migrate import alembic_config
from dirt.db.tasks import waiting_query
from dirt.errors import SubmissionError
from dirt.models import DispatcherInfo, TaskState
from dirt.service import Finished, Service

NODE = {"cpu_count": 4, "platform": "linux", "environ": {}}


def add_record(
    store: Service,
    record_id: str,
    n: int,
    *,
    created: float,
    share: int | None = None,
    priority: int = 0,
    requires: list[str] | None = None,
    first: int = 0,
) -> list[str]:
    """Record `record_id` (created at `created`) with `n` tasks, or `n` more when it exists."""
    record: dict[str, Any] = {"_id": record_id, "type": "record", "created": created}
    if share is not None:
        record["share"] = share
    ids = [f"{record_id}{i}" for i in range(first, first + n)]
    tasks = [
        {
            "_id": t,
            "type": "task",
            "record_id": record_id,
            "name": "examples.simple",
            "priority": priority,
            "created": created + i,
            "requires": requires or [],
        }
        for i, t in enumerate(ids)
    ]
    store.submit([record, *tasks], records_may_exist=True)
    return ids


def offered(store: Service, order: str = "fair") -> list[str]:
    return [t.id for t in store.waiting_tasks(100, order)]


def start(store: Service, *task_ids: str) -> None:
    assert store.dispatch([], [], list(task_ids))[1] == list(task_ids)
    starts = [(t, "n1", time.time(), 1) for t in task_ids]
    assert store.dispatch([], starts, [])[0] == list(task_ids)


def finish(store: Service, task_id: str, state: TaskState = TaskState.SUCCEEDED) -> None:
    result = Finished(
        task_id, 1, "n1", state, {"success": state is TaskState.SUCCEEDED}, None, None
    )
    store.dispatch([result], [], [])


def test_records_take_turns_oldest_record_first(store: Service) -> None:
    add_record(store, "a", 3, created=10)
    add_record(store, "c", 2, created=30)
    add_record(store, "b", 3, created=20)
    assert offered(store) == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2"]


def test_a_records_turns_do_not_depend_on_how_many_tasks_it_queued(store: Service) -> None:
    add_record(store, "big", 50, created=10)
    add_record(store, "small", 2, created=20)
    assert offered(store)[:6] == ["big0", "small0", "big1", "small1", "big2", "big3"]


def test_a_record_with_share_two_takes_two_turns_per_round(store: Service) -> None:
    add_record(store, "a", 3, created=10)
    add_record(store, "heavy", 5, created=20, share=2)
    assert offered(store) == ["a0", "heavy0", "heavy1", "a1", "heavy2", "heavy3", "a2", "heavy4"]
    assert store.record("heavy").extra["share"] == 2


def test_priority_wins_across_records(store: Service) -> None:
    add_record(store, "routine", 3, created=10)
    add_record(store, "urgent", 2, created=20, priority=5)
    add_record(store, "later", 1, created=30)
    assert offered(store) == ["urgent0", "urgent1", "routine0", "later0", "routine1", "routine2"]


def test_fifo_offers_the_oldest_task_first_as_before(store: Service) -> None:
    add_record(store, "a", 3, created=10)
    add_record(store, "b", 2, created=11.5)
    add_record(store, "urgent", 1, created=20, priority=5)
    assert offered(store, "fifo") == ["urgent0", "a0", "a1", "b0", "a2", "b1"]
    by_fifo = sorted(store.waiting_tasks(100, "fifo"), key=lambda t: (-t.priority, t.created, t.id))
    assert offered(store, "fifo") == [t.id for t in by_fifo]


def test_a_record_that_adds_tasks_continues_its_own_turns(store: Service) -> None:
    add_record(store, "a", 2, created=10)
    add_record(store, "b", 3, created=20)
    add_record(store, "a", 2, created=10, first=2)
    assert offered(store) == ["a0", "b0", "a1", "b1", "a2", "b2", "a3"]


def test_a_record_submitted_later_joins_where_the_queue_stands(store: Service) -> None:
    add_record(store, "long", 6, created=10)
    start(store, "long0", "long1", "long2")
    add_record(store, "new", 2, created=20)
    # Not ahead of "long" for the three rounds it already served, nor behind its backlog.
    assert offered(store) == ["long3", "new0", "long4", "new1", "long5"]


def test_a_record_with_nothing_waiting_starts_again_where_the_queue_stands(
    store: Service,
) -> None:
    add_record(store, "done", 8, created=10)
    start(store, *[f"done{i}" for i in range(8)])
    add_record(store, "busy", 6, created=20)
    start(store, "busy0", "busy1")
    add_record(store, "done", 2, created=10, first=8)
    assert offered(store) == ["done8", "busy2", "done9", "busy3", "busy4", "busy5"]


def test_newcomers_join_each_node_where_its_own_queue_stands(store: Service) -> None:
    """A record stuck at an early turn (no node can run it) does not pull newcomers ahead of
    the records the nodes are serving: the dispatcher says where each node's queue is."""
    store.save_node("n1", NODE)
    add_record(store, "stuck", 2, created=5, requires=["GPU in environ"])
    add_record(store, "long", 10, created=10)
    start(store, *[f"long{i}" for i in range(6)])
    store.dispatcher_started(
        DispatcherInfo("", "host", 1, time.time(), time.time(), heads={"n1": {0: 6}})
    )
    add_record(store, "new", 2, created=20)
    assert [t.turn for t in store.tasks(["new0", "new1"])] == [6, 7]
    assert offered(store)[:6] == ["stuck0", "stuck1", "long6", "new0", "long7", "new1"]


def test_a_retried_task_takes_its_turn_where_the_queue_stands(store: Service) -> None:
    add_record(store, "a", 1, created=10)
    start(store, "a0")
    finish(store, "a0", TaskState.FAILED)
    add_record(store, "b", 5, created=20)
    start(store, "b0", "b1", "b2")
    store.retry_task("a0")
    assert offered(store) == ["a0", "b3", "b4"]
    assert store.task("a0").turn == 3


def test_a_requeued_task_keeps_its_place(store: Service) -> None:
    add_record(store, "a", 3, created=10)
    add_record(store, "b", 3, created=20)
    start(store, "a0")
    store.requeue([("a0", 1)], "node n1 lost", node_lost=True)
    assert offered(store)[:3] == ["a0", "b0", "a1"]


@pytest.mark.parametrize("share", [0, -1, 1001, 2.5, "2", True])
def test_a_share_that_is_not_a_whole_number_from_1_to_1000_is_refused(
    store: Service, share: Any
) -> None:
    with pytest.raises(SubmissionError, match="'share' must be a whole number from 1 to 1000"):
        store.submit([{"_id": "r", "type": "record", "share": share}])
    assert store.record_page() == []


@pytest.mark.parametrize("order", ["fair", "fifo"])
def test_the_waiting_read_is_a_keyset_scan_of_an_index_in_its_order(
    store: Service, order: str
) -> None:
    add_record(store, "a", 20, created=10)
    with store.engine.connect() as conn:
        query = waiting_query(128, order).compile(conn, compile_kwargs={"literal_binds": True})
        if conn.dialect.name == "sqlite":
            plan = " ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
            index = {"fair": "ix_tasks_fair", "fifo": "ix_tasks_waiting"}[order]
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")  # as on a big table
            plan = " ".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {query}"))
            index = {"fair": "ix_tasks_fair", "fifo": "ix_tasks_waiting"}[order]
    assert index in plan and "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def test_the_migration_numbers_waiting_tasks_per_record(store_settings: Settings) -> None:
    """A store made before fair order gets every waiting task its turn: each record's tasks
    from round 0, so every record starts level."""
    engine: Engine = make_engine(store_settings.database_url)
    try:
        config = alembic_config()
        with write_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0005")
            conn.execute(
                text(
                    "INSERT INTO records (id, description, created, extra, seq) VALUES "
                    "('old', '', 1.0, '{}', 1), ('two', '', 2.0, '{\"share\": 2}', 1)"
                )
            )
            rows = [("old", i, "waiting") for i in range(3)] + [
                ("two", i, "waiting") for i in range(4)
            ]
            rows.append(("old", 9, "succeeded"))
            for record_id, i, state in rows:
                conn.execute(
                    text(
                        "INSERT INTO tasks (id, record_id, name, requires, priority, created, "
                        "state, attempts, extra, seq, cancel_requested) VALUES (:id, :r, "
                        "'examples.simple', '[]', 0, :c, :s, 0, '{}', 1, false)"
                    ),
                    {"id": f"{record_id}{i}", "r": record_id, "c": 10.0 + i, "s": state},
                )
        service = Service(store_settings, engine=engine)
        assert offered(service) == ["old0", "two0", "two1", "old1", "two2", "two3", "old2"]
        add_record(service, "two", 1, created=2, first=4)
        assert offered(service)[-1] == "two4"
    finally:
        engine.dispose()
