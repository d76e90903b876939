"""The store, run against SQLite and a real PostgreSQL: same behaviour on both.

Tasks move the way production moves them: submit, reserve (by one master), start, finish, in
the dispatcher's one-step `dispatch`; release, requeue, recovery, cancel and retry around that.
A second `Service` on the same store is a second master (a second dispatcher).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dirt.config import Settings
from dirt.db import dispatching as dispatching_db
from dirt.db.engine import write_transaction
from dirt.errors import NotFoundError, StateError
from dirt.models import Attachment, Outcome, TaskState
from dirt.service import Finished, Service
from dirt.service.base import NODES, TASKS
from dirt.service.dispatching import ORPHAN_REASON


@pytest.fixture
def other(store_settings: Settings) -> Iterator[Service]:
    """A second master on the same store."""
    svc = Service(store_settings)
    yield svc
    svc.close()


def submit_one(store: Service, task_id: str = "t1", record_id: str = "r1", **fields: Any) -> None:
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
                **fields,
            },
        ]
    )


def submit_many(store: Service, n: int, record_id: str = "r1") -> list[str]:
    ids = [f"t{i:03d}" for i in range(n)]
    store.submit(
        [{"_id": record_id, "type": "record"}]
        + [
            {"_id": t, "type": "task", "record_id": record_id, "name": "examples.simple"}
            for t in ids
        ]
    )
    return ids


def reserve(master: Service, *task_ids: str) -> list[str]:
    started, reserved = master.dispatch([], [], list(task_ids))
    assert started == []
    return reserved


def start(master: Service, task_id: str, node: str = "n1") -> list[str]:
    """Mark a task `master` reserved as running on `node`, the next attempt."""
    attempt = master.task(task_id).attempts + 1
    started, _ = master.dispatch([], [(task_id, node, time.time(), attempt)], [])
    return started


def run(master: Service, task_id: str, node: str = "n1") -> int:
    """Reserve and start a task; returns its attempt number."""
    assert reserve(master, task_id) == [task_id]
    assert start(master, task_id, node) == [task_id]
    return master.task(task_id).attempts


def result(
    task_id: str,
    attempt: int,
    state: TaskState = TaskState.SUCCEEDED,
    node: str = "n1",
    **fields: Any,
) -> Finished:
    return Finished(
        task_id,
        attempt=attempt,
        node=node,
        state=state,
        results={"success": state is TaskState.SUCCEEDED},
        reason=None if state is TaskState.SUCCEEDED else "it broke",
        module_sha256="ab" * 32,
        **fields,
    )


def finish(master: Service, *finished: Finished) -> None:
    master.dispatch(list(finished), [], [])


def outcomes(store: Service, task_id: str) -> list[tuple[str, Outcome | None]]:
    return [(a.node, a.outcome) for a in store.task_detail(task_id)[2]]


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


# ---- submitting and the change sequence ------------------------------------------------------


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
    reserve(store, "t1")
    after_reserve = store.current_seq()
    assert before < after_submit < after_reserve
    assert store.task("t1").seq == after_reserve
    assert store.record_detail("r1").record.seq == after_submit


def test_a_write_elsewhere_is_seen_even_when_one_of_ours_commits_after_it(
    store: Service, other: Service
) -> None:
    submit_one(store)
    store.changed_elsewhere()  # all known
    submit_one(other, "t2", "r2")  # another process's submission...
    reserve(store, "t1")  # ...then a write of ours takes the next value
    assert store.changed_elsewhere()
    assert not store.changed_elsewhere()


def test_our_own_writes_are_not_news_from_elsewhere(store: Service) -> None:
    submit_one(store)
    store.changed_elsewhere()
    reserve(store, "t1")
    assert not store.changed_elsewhere()


def test_a_write_elsewhere_says_what_it_wakes_dispatchers_for(
    store: Service, other: Service
) -> None:
    store.changed_elsewhere()  # all known
    submit_one(other)
    assert store.changed_elsewhere() == {TASKS}
    other.save_node("n1", {"cpu_count": 2})
    assert store.changed_elsewhere() == {NODES}
    other.cancel_task("t1")
    other.set_node_enabled("n1", False)
    assert store.changed_elsewhere() == {TASKS, NODES}
    assert store.changed_elsewhere() == set()


def test_a_write_elsewhere_that_wakes_no_one_is_no_news(store: Service, other: Service) -> None:
    submit_one(store)
    store.changed_elsewhere()
    reserve(other, "t1")  # another dispatcher's progress
    assert store.changed_elsewhere() == set()
    submit_one(other, "t2", "r2")
    reserve(store, "t2")  # ours after theirs: theirs is still seen
    assert store.changed_elsewhere() == {TASKS}


def test_a_failed_write_changes_nothing(store: Service) -> None:
    submit_one(store)
    seq = store.current_seq()
    with pytest.raises(RuntimeError), write_transaction(store.engine) as conn:
        dispatching_db.reserve_tasks(conn, ["t1"], store.master_id, seq + 1)
        raise RuntimeError("boom")
    assert [t.id for t in store.waiting_tasks(10)] == ["t1"]
    assert store.current_seq() == seq


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


# ---- reserve, start, finish --------------------------------------------------------------------


def test_a_reserved_task_still_waits_but_is_offered_to_no_one(store: Service) -> None:
    submit_one(store)
    assert reserve(store, "t1") == ["t1"]
    assert store.task("t1").state is TaskState.WAITING
    assert store.waiting_tasks(10) == []


def test_a_task_another_master_reserved_cannot_be_reserved(store: Service, other: Service) -> None:
    submit_one(store)
    assert reserve(store, "t1") == ["t1"]
    assert reserve(other, "t1") == []


def test_a_reserved_task_starts_running_on_its_node(store: Service) -> None:
    submit_one(store)
    reserve(store, "t1")
    assert start(store, "t1", "n1") == ["t1"]
    task = store.task("t1")
    assert (task.state, task.node, task.attempts) == (TaskState.RUNNING, "n1", 1)
    assert task.started is not None and task.waiting_reason is None
    assert outcomes(store, "t1") == [("n1", None)]


def test_only_the_reserving_master_starts_a_task(store: Service, other: Service) -> None:
    submit_one(store)
    reserve(store, "t1")
    assert start(other, "t1") == []
    assert store.task("t1").state is TaskState.WAITING
    assert outcomes(store, "t1") == []


def test_a_finished_run_stores_its_results_and_closes_its_attempt(store: Service) -> None:
    submit_one(store)
    attempt = run(store, "t1")
    finish(store, result("t1", attempt, output="hello\n"))
    task = store.task("t1")
    assert (task.state, task.results, task.module_sha256, task.output) == (
        TaskState.SUCCEEDED,
        {"success": True},
        "ab" * 32,
        "hello\n",
    )
    assert task.completed is not None
    assert outcomes(store, "t1") == [("n1", Outcome.SUCCEEDED)]


def test_a_finished_run_stores_its_attachments(store: Service) -> None:
    submit_one(store)
    attempt = run(store, "t1")
    log = Attachment("t1", "log.txt", "the log", "text/plain", 3, b"abc", time.time())
    finish(store, result("t1", attempt, attachments=[log]))
    stored = store.attachment("t1", "log.txt")
    assert (stored.link_name, stored.content) == ("the log", b"abc")


def test_a_task_can_start_and_finish_in_one_step(store: Service) -> None:
    submit_one(store)
    reserve(store, "t1")
    started, _ = store.dispatch([result("t1", 1)], [("t1", "n1", time.time(), 1)], [])
    assert started == ["t1"]
    assert store.task("t1").state is TaskState.SUCCEEDED
    assert outcomes(store, "t1") == [("n1", Outcome.SUCCEEDED)]


def test_a_run_that_ended_before_its_start_was_written_is_stored_in_one_write(
    store: Service,
) -> None:
    submit_one(store)
    reserve(store, "t1")
    began = time.time()
    finish(store, result("t1", 1, node="n2", started=began))
    task = store.task("t1")
    assert (task.state, task.node, task.started, task.attempts) == (
        TaskState.SUCCEEDED,
        "n2",
        began,
        1,
    )
    assert outcomes(store, "t1") == [("n2", Outcome.SUCCEEDED)]


def test_a_result_from_a_stale_attempt_is_refused(store: Service) -> None:
    submit_one(store)
    run(store, "t1")
    finish(store, result("t1", 7))
    task = store.task("t1")
    assert (task.state, task.results) == (TaskState.RUNNING, None)
    assert outcomes(store, "t1") == [("n1", None)]


def test_a_result_from_another_master_is_refused(store: Service, other: Service) -> None:
    submit_one(store)
    attempt = run(store, "t1")
    finish(other, result("t1", attempt))
    assert store.task("t1").state is TaskState.RUNNING


def test_records_list_newest_first_with_counts(store: Service) -> None:
    store.submit(
        [
            {"_id": "old", "type": "record", "created": 100},
            {"_id": "new", "type": "record", "created": 200},
            {"type": "task", "record_id": "new", "name": "examples.simple"},
            {"type": "task", "record_id": "new", "name": "examples.simple"},
        ]
    )
    run(store, store.record_detail("new").tasks[0].id)
    summaries = store.record_page()
    assert [s.record.id for s in summaries] == ["new", "old"]
    assert summaries[0].counts["waiting"] == 1 and summaries[0].counts["running"] == 1
    assert summaries[1].ntasks == 0
    assert [s.record.id for s in store.record_page(before=(200, "new"))] == ["old"]


# ---- two masters at once ---------------------------------------------------------------------


def test_concurrent_reservations_from_two_masters_reserve_each_task_once(
    store: Service, other: Service
) -> None:
    ids = submit_many(store, 200)
    got: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def reserve_all(master: Service) -> None:
        mine: list[str] = []
        barrier.wait()
        # Both ask for the same tasks in the same order: every chunk is contested.
        for i in range(0, len(ids), 10):
            mine += reserve(master, *ids[i : i + 10])
        got[master.master_id] = mine

    threads = [threading.Thread(target=reserve_all, args=(m,)) for m in (store, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    mine, theirs = got[store.master_id], got[other.master_id]
    assert not set(mine) & set(theirs)
    assert sorted(mine + theirs) == ids
    # The store agrees: each master can start exactly what it was told it reserved.
    now = time.time()
    assert store.dispatch([], [(t, "a", now, 1) for t in mine], [])[0] == mine
    assert other.dispatch([], [(t, "b", now, 1) for t in theirs], [])[0] == theirs


def test_two_dispatchers_taking_waiting_tasks_run_each_once(store: Service, other: Service) -> None:
    ids = submit_many(store, 120)
    ran: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def dispatcher(master: Service, node: str) -> None:
        mine: list[str] = []
        barrier.wait()
        while offered := master.waiting_tasks(8):
            reserved = reserve(master, *(t.id for t in offered))
            starts = [
                (t.id, node, time.time(), t.attempts + 1) for t in offered if t.id in reserved
            ]
            mine += master.dispatch([], starts, [])[0]
        ran[node] = mine

    threads = [
        threading.Thread(target=dispatcher, args=(m, n)) for m, n in ((store, "a"), (other, "b"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(ran["a"] + ran["b"]) == ids
    assert {t.node for t in store.tasks(ran["a"])} <= {"a"}
    assert {t.node for t in store.tasks(ran["b"])} <= {"b"}


# ---- release -----------------------------------------------------------------------------------


def test_release_gives_reserved_tasks_back_to_every_master(store: Service, other: Service) -> None:
    submit_one(store)
    reserve(store, "t1")
    assert store.release() == 1
    assert reserve(other, "t1") == ["t1"]


def test_release_of_named_tasks_keeps_the_rest_reserved(store: Service, other: Service) -> None:
    ids = submit_many(store, 2)
    reserve(store, *ids)
    assert store.release([ids[0]]) == 1
    assert reserve(other, *ids) == [ids[0]]


def test_release_leaves_running_tasks_alone(store: Service) -> None:
    submit_one(store)
    run(store, "t1")
    assert store.release() == 0
    assert store.task("t1").state is TaskState.RUNNING


def test_a_master_releases_only_its_own_reservations(store: Service, other: Service) -> None:
    submit_one(store)
    reserve(store, "t1")
    assert other.release() == 0
    assert store.waiting_tasks(10) == []


# ---- requeue after a lost node -----------------------------------------------------------------


def test_requeue_returns_a_running_task_to_waiting_and_keeps_the_attempt(store: Service) -> None:
    submit_one(store)
    attempt = run(store, "t1", "a")
    requeued, failed = store.requeue([("t1", attempt)], "node a lost", node_lost=True)
    assert (requeued, failed) == (["t1"], [])
    task = store.task("t1")
    assert (task.state, task.node) == (TaskState.WAITING, None)
    # Why it went back is the lost attempt's reason; its waiting reason is why it waits now.
    assert [a.reason for a in store.task_detail("t1")[2]] == ["node a lost"]
    assert outcomes(store, "t1") == [("a", Outcome.LOST)]
    assert [t.id for t in store.waiting_tasks(10)] == ["t1"]


def test_a_requeued_task_runs_again_as_its_next_attempt(store: Service) -> None:
    submit_one(store)
    store.requeue([("t1", run(store, "t1", "a"))], "node a lost", node_lost=True)
    assert run(store, "t1", "b") == 2
    assert outcomes(store, "t1") == [("a", Outcome.LOST), ("b", None)]


def test_a_task_that_loses_max_attempts_nodes_fails(store: Service) -> None:
    submit_one(store)
    for node in ("n1", "n2", "n3"):
        attempt = run(store, "t1", node)
        store.requeue([("t1", attempt)], f"node {node} lost", node_lost=True)
    task = store.task("t1")
    assert task.state is TaskState.FAILED
    assert task.reason == "node n3 lost; gave up after 3 attempt(s)"
    assert [o for _, o in outcomes(store, "t1")] == [Outcome.LOST, Outcome.LOST, Outcome.FAILED]


def test_a_task_s_own_max_attempts_overrides_the_setting(store: Service) -> None:
    submit_one(store, max_attempts=1)
    requeued, failed = store.requeue([("t1", run(store, "t1"))], "node lost", node_lost=True)
    assert (requeued, failed) == ([], ["t1"])
    assert store.task("t1").state is TaskState.FAILED


def test_a_requeue_for_a_stale_attempt_changes_nothing(store: Service) -> None:
    submit_one(store)
    run(store, "t1")
    assert store.requeue([("t1", 5)], "node lost", node_lost=True) == ([], [])
    assert store.task("t1").state is TaskState.RUNNING


def test_a_cancelled_task_whose_node_is_lost_ends_cancelled(store: Service) -> None:
    submit_one(store)
    attempt = run(store, "t1")
    store.cancel_task("t1")
    store.requeue([("t1", attempt)], "node lost", node_lost=True)
    task = store.task("t1")
    assert task.state is TaskState.CANCELLED
    assert task.reason is not None and "node was lost" in task.reason


# ---- recovery after a dispatcher died ------------------------------------------------------


def test_running_tasks_of_a_dead_dispatcher_go_back_to_waiting(
    store: Service, other: Service
) -> None:
    submit_one(store)
    dead = other
    dead.master_id = f"{socket.gethostname()}:{dead_pid()}:deadbeef"
    run(dead, "t1")
    assert store.recover_orphans() == ["t1"]
    assert store.task("t1").state is TaskState.WAITING
    [attempt] = store.task_detail("t1")[2]
    assert (attempt.reason or "").startswith(ORPHAN_REASON)
    assert outcomes(store, "t1") == [("n1", Outcome.LOST)]


def test_reservations_of_a_dead_dispatcher_are_released(store: Service, other: Service) -> None:
    submit_one(store)
    dead = other
    dead.master_id = f"{socket.gethostname()}:{dead_pid()}:deadbeef"
    reserve(dead, "t1")
    assert store.recover_orphans() == []
    assert [t.id for t in store.waiting_tasks(10)] == ["t1"]


def test_a_dispatcher_on_another_host_is_presumed_alive(store: Service, other: Service) -> None:
    submit_one(store)
    elsewhere = other
    elsewhere.master_id = "elsewhere.example:1:cafe"
    run(elsewhere, "t1")
    assert store.recover_orphans() == []
    assert store.task("t1").state is TaskState.RUNNING


def test_a_live_dispatcher_keeps_its_tasks(store: Service) -> None:
    submit_one(store)
    run(store, "t1")
    assert store.recover_orphans() == []
    assert store.task("t1").state is TaskState.RUNNING


# ---- cancel and retry --------------------------------------------------------------------------


def test_cancel_of_a_waiting_task_cancels_it_at_once(store: Service) -> None:
    submit_one(store)
    task = store.cancel_task("t1")
    assert (task.state, task.reason) == (TaskState.CANCELLED, "cancelled by request")
    assert store.waiting_tasks(10) == []


def test_cancel_of_a_reserved_task_keeps_it_from_starting(store: Service) -> None:
    submit_one(store)
    reserve(store, "t1")
    store.cancel_task("t1")
    assert start(store, "t1") == []
    assert store.task("t1").state is TaskState.CANCELLED


def test_cancel_of_a_running_task_asks_the_dispatcher_that_runs_it(
    store: Service, other: Service
) -> None:
    submit_one(store)
    attempt = run(store, "t1")
    task = store.cancel_task("t1")
    assert (task.state, task.cancel_requested) == (TaskState.RUNNING, True)
    assert store.cancel_requested() == [("t1", attempt)]
    assert other.cancel_requested() == []


def test_a_killed_run_is_stored_as_cancelled(store: Service) -> None:
    submit_one(store)
    attempt = run(store, "t1")
    store.cancel_task("t1")
    finish(store, result("t1", attempt, TaskState.CANCELLED))
    assert store.task("t1").state is TaskState.CANCELLED
    assert store.cancel_requested() == []


def test_cancel_of_a_finished_task_is_refused(store: Service) -> None:
    submit_one(store)
    finish(store, result("t1", run(store, "t1")))
    with pytest.raises(StateError, match="nothing to cancel"):
        store.cancel_task("t1")
    assert store.task("t1").state is TaskState.SUCCEEDED


def test_cancel_of_an_unknown_task_is_not_found(store: Service) -> None:
    with pytest.raises(NotFoundError):
        store.cancel_task("nope")


def test_a_retried_task_waits_again_and_keeps_its_attempts(store: Service) -> None:
    submit_one(store)
    finish(store, result("t1", run(store, "t1"), TaskState.FAILED))
    task = store.retry_task("t1")
    assert (task.state, task.results, task.reason, task.node) == (
        TaskState.WAITING,
        None,
        None,
        None,
    )
    assert outcomes(store, "t1") == [("n1", Outcome.FAILED)]
    assert run(store, "t1") == 2


def test_a_retry_forgets_the_attachments_of_the_previous_run(store: Service) -> None:
    submit_one(store)
    log = Attachment("t1", "log.txt", "log", "text/plain", 3, b"abc", time.time())
    finish(store, result("t1", run(store, "t1"), attachments=[log]))
    store.retry_task("t1")
    with pytest.raises(NotFoundError):
        store.attachment("t1", "log.txt")


def test_a_retried_task_that_lost_nodes_before_gets_all_its_attempts_again(
    store: Service,
) -> None:
    submit_one(store, max_attempts=2)
    store.requeue([("t1", run(store, "t1"))], "node lost", node_lost=True)
    finish(store, result("t1", run(store, "t1"), TaskState.FAILED))
    store.retry_task("t1")
    assert store.requeue([("t1", run(store, "t1"))], "node lost", node_lost=True) == (["t1"], [])


def test_retry_of_an_unfinished_task_is_refused(store: Service) -> None:
    submit_one(store)
    with pytest.raises(StateError, match="only a finished task"):
        store.retry_task("t1")


def test_retry_failed_brings_back_every_failed_task_of_a_record(store: Service) -> None:
    ids = submit_many(store, 3)
    finish(store, result(ids[0], run(store, ids[0]), TaskState.FAILED))
    finish(store, result(ids[1], run(store, ids[1])))
    assert store.retry_failed("r1") == [ids[0]]
    waiting, succeeded = TaskState.WAITING, TaskState.SUCCEEDED
    assert [t.state for t in store.tasks(ids)] == [waiting, succeeded, waiting]


# ---- the dispatcher's notes ------------------------------------------------------------------


def test_a_task_that_can_never_run_fails_with_the_reason(store: Service) -> None:
    submit_one(store)
    assert store.fail_unrunnable("t1", "task module examples.simple not found")
    task = store.task("t1")
    assert (task.state, task.reason) == (TaskState.FAILED, "task module examples.simple not found")


def test_only_waiting_tasks_have_a_waiting_reason(store: Service) -> None:
    ids = submit_many(store, 2)
    run(store, ids[1])
    waiting, running = store.tasks(ids)
    assert waiting.waiting_reason == "no enabled node: add one with `dirt nodes add HOST`"
    assert running.waiting_reason is None


# ---- nodes ---------------------------------------------------------------------------------


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


def test_a_node_that_runs_tasks_cannot_be_removed(store: Service) -> None:
    store.save_node("h1", {"cpu_count": 4})
    submit_one(store)
    run(store, "t1", "h1")
    with pytest.raises(StateError, match="running 1 task"):
        store.remove_node("h1")
    assert store.node("h1").address == "h1"


def test_node_health_counts_failures_of_the_node_itself(store: Service) -> None:
    store.save_node("h1", {"cpu_count": 4})
    store.node_health("h1", online=False, error="connection refused", infra_failure=True)
    store.node_health("h1", online=True, load=[0.5, 0.4, 0.3], infra_failure=True)
    node = store.node("h1")
    assert (node.online, node.last_error, node.load, node.infra_failures) == (
        True,
        None,
        [0.5, 0.4, 0.3],
        2,
    )
