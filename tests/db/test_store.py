"""The store, run against SQLite and a real PostgreSQL: same behaviour on both."""

from __future__ import annotations

import threading

from dirt.db import tasks as tasks_db
from dirt.db.engine import write_transaction
from dirt.models import TaskState
from dirt.service import Finished, Service


def submit_one(store: Service, task_id: str = "t1", record_id: str = "r1") -> None:
    store.submit(
        [
            {"_id": record_id, "type": "record", "description": "one", "sha": "f00"},
            {
                "_id": task_id,
                "type": "task",
                "record_id": record_id,
                "name": "examples.simple",
                "kwargs": {"n": 1},
                "requires": ["architecture is x86_64"],
            },
        ]
    )


def test_a_submission_round_trips_with_its_extra_fields(store: Service) -> None:
    submit_one(store)
    detail = store.record_detail("r1")
    assert detail.record.to_doc() == {
        "_id": "r1",
        "type": "record",
        "description": "one",
        "created": detail.record.created,
        "sha": "f00",
    }
    task = detail.tasks[0]
    assert (task.state, task.kwargs, task.requires) == (
        TaskState.WAITING,
        {"n": 1},
        ["architecture is x86_64"],
    )


def test_every_write_takes_the_next_sequence_value(store: Service) -> None:
    before = store.current_seq()
    submit_one(store)
    after_submit = store.current_seq()
    store.claim([("t1", "local")])
    after_claim = store.current_seq()
    assert before < after_submit < after_claim
    assert store.task("t1").seq == after_claim
    assert store.record_detail("r1").record.seq == after_submit


def test_a_claim_succeeds_once(store: Service) -> None:
    submit_one(store)
    assert store.claim([("t1", "a")]) == ["t1"]
    assert store.claim([("t1", "b")]) == []
    task = store.task("t1")
    assert (task.state, task.node, task.attempts) == (TaskState.RUNNING, "a", 1)


def test_concurrent_claims_of_one_task_have_one_winner(store: Service) -> None:
    submit_one(store)
    wins: list[list[str]] = []
    barrier = threading.Barrier(4)

    def claim(node: str) -> None:
        barrier.wait()
        wins.append(store.claim([("t1", node)]))

    threads = [threading.Thread(target=claim, args=(f"n{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(w) for w in wins) == [0, 0, 0, 1]


def test_results_are_stored_only_under_the_claim_that_ran(store: Service) -> None:
    submit_one(store)
    store.claim([("t1", "a")])
    stale = Finished(
        "t1",
        attempt=7,
        node="a",
        state=TaskState.SUCCEEDED,
        results={"success": True},
        reason=None,
        module_sha256="x",
    )
    store.finish([stale])
    assert store.task("t1").state is TaskState.RUNNING
    good = Finished(
        "t1",
        attempt=1,
        node="a",
        state=TaskState.SUCCEEDED,
        results={"success": True},
        reason=None,
        module_sha256="ab" * 32,
    )
    store.finish([good])
    task = store.task("t1")
    assert (task.state, task.results, task.module_sha256) == (
        TaskState.SUCCEEDED,
        {"success": True},
        "ab" * 32,
    )


def test_requeue_returns_a_running_task_to_waiting_and_keeps_the_attempt(store: Service) -> None:
    submit_one(store)
    store.claim([("t1", "a")])
    requeued, failed = store.requeue([("t1", 1)], "node a lost", node_lost=True)
    assert (requeued, failed) == (["t1"], [])
    task = store.task("t1")
    assert (task.state, task.node, task.waiting_reason) == (TaskState.WAITING, None, "node a lost")
    attempts = store.record_detail("r1").attempts["t1"]
    assert [(a.node, a.outcome) for a in attempts] == [("a", "lost")]


def test_a_task_that_loses_max_attempts_nodes_fails(store: Service) -> None:
    submit_one(store)
    for attempt in (1, 2, 3):
        store.claim([("t1", f"n{attempt}")])
        store.requeue([("t1", attempt)], f"node n{attempt} lost", node_lost=True)
    task = store.task("t1")
    assert task.state is TaskState.FAILED
    assert "gave up after 3 attempt(s)" in task.reason


def test_records_list_newest_first_with_counts(store: Service) -> None:
    store.submit(
        [
            {"_id": "old", "type": "record", "created": 100},
            {"_id": "new", "type": "record", "created": 200},
            {"type": "task", "record_id": "new", "name": "examples.simple"},
            {"type": "task", "record_id": "new", "name": "examples.simple"},
        ]
    )
    store.claim([(store.record_detail("new").tasks[0].id, "a")])
    summaries = store.record_page()
    assert [s.record.id for s in summaries] == ["new", "old"]
    assert summaries[0].counts["waiting"] == 1 and summaries[0].counts["running"] == 1
    assert summaries[1].ntasks == 0
    assert [s.record.id for s in store.record_page(before=(200, "new"))] == ["old"]


def test_waiting_tasks_come_highest_priority_then_oldest(store: Service) -> None:
    store.submit(
        [
            {"_id": "r", "type": "record"},
            {
                "_id": "low",
                "type": "task",
                "record_id": "r",
                "name": "examples.simple",
                "created": 1,
            },
            {
                "_id": "high",
                "type": "task",
                "record_id": "r",
                "name": "examples.simple",
                "created": 3,
                "priority": 5,
            },
            {
                "_id": "mid",
                "type": "task",
                "record_id": "r",
                "name": "examples.simple",
                "created": 2,
            },
        ]
    )
    assert [t.id for t in store.waiting_tasks(10)] == ["high", "low", "mid"]


def test_nodes_are_added_refreshed_and_removed(store: Service) -> None:
    store.save_node("h1", {"cpu_count": 4, "hostname": "a"})
    store.set_node_enabled("h1", False)
    store.save_node("h1", {"cpu_count": 8, "hostname": "a"})
    node = store.node("h1")
    assert (node.slots, node.enabled, node.sys_info["cpu_count"]) == (8, False, 8)
    store.save_node("h1", {"cpu_count": 8}, slots=2)
    assert store.node("h1").slots == 2
    store.remove_node("h1")
    assert store.nodes() == []


def test_a_failed_write_changes_nothing(store: Service) -> None:
    submit_one(store)
    seq = store.current_seq()
    try:
        with write_transaction(store.engine) as conn:
            tasks_db.claim_tasks(conn, [("t1", "a")], "m", 1.0, seq + 1)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert store.task("t1").state is TaskState.WAITING
    assert store.current_seq() == seq
