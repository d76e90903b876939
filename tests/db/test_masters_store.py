"""Several masters on one store, on SQLite and a real PostgreSQL: leases, takeover of a dead
master, node leases, and writes repeated after the store went away mid-commit.

Each `Service` is a master; a short lease (1 s) runs out within the test.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from dirt.config import Settings
from dirt.db import masters as masters_db
from dirt.errors import ConfigError
from dirt.models import Attachment, Outcome, TaskState
from dirt.service import Service
from dirt.service.dispatching import ORPHAN_REASON
from dirt.service.masters import TakeOver
from tests.db.test_store import finish, outcomes, reserve, result, run, start, submit_one

LEASE = 1.0


@pytest.fixture
def other(store_settings: Settings) -> Iterator[Service]:
    """A second master on the same store."""
    svc = Service(store_settings)
    yield svc
    svc.close()


def node(store: Service, address: str = "n1") -> None:
    store.save_node(address, {"cpu_count": 2, "architecture": "x86_64"}, slots=2)


def expire(master: Service) -> None:
    """Let `master`'s lease (LEASE seconds) run out."""
    deadline = time.time() + LEASE + 0.2
    while any(d.id == master.master_id and d.live for d in master.dispatchers()):
        assert time.time() < deadline, "the lease did not run out"
        time.sleep(0.05)


def test_a_registered_dispatcher_is_listed_with_its_nodes_and_running_tasks(
    store: Service,
) -> None:
    node(store)
    submit_one(store)
    store.register_dispatcher(15)
    assert store.claim_nodes(["n1"], time.time()) == ["n1"]
    run(store, "t1")
    (me,) = store.dispatchers()
    assert (me.id, me.live, me.state, me.nodes, me.running) == (
        store.master_id,
        True,
        "running",
        ["n1"],
        1,
    )
    assert store.node("n1").driver == store.master_id
    assert me.lease_until - me.heartbeat == pytest.approx(15)


def test_a_dispatcher_whose_lease_ran_out_is_listed_dead(store: Service) -> None:
    store.register_dispatcher(LEASE)
    expire(store)
    assert [d.live for d in store.dispatchers()] == [False]
    assert store.renew_lease(LEASE, "running") is True
    assert [d.live for d in store.dispatchers()] == [True]


def test_a_master_takes_over_what_one_whose_lease_ran_out_held(
    store: Service, other: Service
) -> None:
    node(store)
    submit_one(store)
    submit_one(store, "t2", record_id="r2")
    store.register_dispatcher(15)
    other.register_dispatcher(LEASE)
    other.claim_nodes(["n1"], time.time())
    run(other, "t1")
    reserve(other, "t2")
    expire(other)
    (done,) = store.take_over_dead(settled=True)
    assert (done.master, done.requeued, done.released, done.nodes) == (
        other.master_id,
        ["t1"],
        1,
        ["n1"],
    )
    assert store.task("t1").state is TaskState.WAITING
    [attempt] = store.task_detail("t1")[2]
    assert (attempt.reason or "").startswith(ORPHAN_REASON)
    assert outcomes(store, "t1") == [("n1", Outcome.LOST)]
    assert {t.id for t in store.waiting_tasks(10)} == {"t1", "t2"}
    assert store.node("n1").driver is None
    assert [d.id for d in store.dispatchers()] == [store.master_id]
    assert other.renew_lease(LEASE, "running") is False  # it learns it was taken over


def test_a_master_that_has_not_held_its_own_lease_a_whole_lease_judges_no_lease(
    store: Service, other: Service
) -> None:
    submit_one(store)
    store.register_dispatcher(15)
    other.register_dispatcher(LEASE)
    run(other, "t1")
    expire(other)
    assert store.take_over_dead(settled=False) == []
    assert store.task("t1").state is TaskState.RUNNING


def test_a_taken_over_task_out_of_attempts_fails(store: Service, other: Service) -> None:
    submit_one(store, max_attempts=1)
    other.register_dispatcher(LEASE)
    run(other, "t1")
    expire(other)
    (done,) = store.take_over_dead(settled=True)
    assert done.failed == ["t1"]
    task = store.task("t1")
    assert task.state is TaskState.FAILED
    assert "gave up after 1 attempt" in (task.reason or "")


def test_a_taken_over_master_cannot_store_the_runs_it_lost(store: Service, other: Service) -> None:
    submit_one(store)
    other.register_dispatcher(LEASE)
    attempt = run(other, "t1")
    expire(other)
    store.take_over_dead(settled=True)
    finish(other, result("t1", attempt))  # its late result: refused by the claim
    assert store.task("t1").state is TaskState.WAITING
    again = run(store, "t1", "n2")
    finish(store, result("t1", again, node="n2"))
    assert store.task("t1").state is TaskState.SUCCEEDED
    assert outcomes(store, "t1") == [("n1", Outcome.LOST), ("n2", Outcome.SUCCEEDED)]


def test_two_masters_finding_the_same_dead_one_take_it_over_once(
    store: Service, other: Service, store_settings: Settings
) -> None:
    submit_one(store)
    third = Service(store_settings)
    try:
        other.register_dispatcher(LEASE)
        run(other, "t1")
        expire(other)
        found: list[TakeOver] = []
        threads = [
            threading.Thread(target=lambda m=m: found.extend(m.take_over_dead(settled=True)))
            for m in (store, third)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [t.requeued for t in found] == [["t1"]]
        assert outcomes(store, "t1") == [("n1", Outcome.LOST)]
    finally:
        third.close()


def test_a_dispatcher_whose_process_is_gone_from_this_machine_is_taken_over_at_once(
    store: Service, store_settings: Settings
) -> None:
    submit_one(store)
    script = (
        "import sys\n"
        "from dirt.config import load_settings\n"
        "from dirt.service import Service\n"
        "settings = load_settings(sys.argv[1], environ={},\n"
        "    overrides={'project': {'database_url': sys.argv[2]}})\n"
        "svc = Service(settings)\n"
        "svc.register_dispatcher(60.0)\n"
        "svc.dispatch([], [], ['t1'])\n"
        "svc.dispatch([], [('t1', 'n1', 1.0, 1)], [])\n"
        "print(svc.master_id)\n"
    )
    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(store_settings.project_dir),
            store_settings.database_url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert store.task("t1").state is TaskState.RUNNING
    (done,) = store.take_over_dead(settled=False)  # no waiting for its 60 s lease
    assert (done.master, done.requeued) == (dead, ["t1"])
    assert "is gone" in done.why


def test_a_node_is_claimed_by_one_master_only(store: Service, other: Service) -> None:
    node(store)
    store.register_dispatcher(15)
    other.register_dispatcher(15)
    assert store.claim_nodes(["n1"], time.time()) == ["n1"]
    assert other.claim_nodes(["n1"], time.time()) == []
    assert other.release_nodes(["n1"]) == []  # not its to release
    assert store.release_nodes(["n1"]) == ["n1"]
    assert other.claim_nodes(["n1"], time.time()) == ["n1"]


def test_a_master_taken_over_claims_no_node_before_it_notices(
    store: Service, other: Service
) -> None:
    node(store)
    store.register_dispatcher(15)
    other.register_dispatcher(LEASE)
    expire(other)
    store.take_over_dead(settled=True)
    assert other.claim_nodes(["n1"], time.time()) == []
    assert store.node("n1").driver is None


def test_a_start_repeated_after_the_store_went_away_mid_commit_is_not_refused(
    store: Service,
) -> None:
    submit_one(store)
    reserve(store, "t1")
    attempt = store.task("t1").attempts + 1
    first = store.dispatch([], [("t1", "n1", 1.0, attempt)], [])
    again = store.dispatch([], [("t1", "n1", 1.0, attempt)], [])
    assert first == again == (["t1"], [])
    assert outcomes(store, "t1") == [("n1", None)]


def test_a_finish_repeated_after_the_store_went_away_mid_commit_is_stored_once(
    store: Service,
) -> None:
    submit_one(store)
    attempt = run(store, "t1")
    files = [Attachment("t1", "log.txt", "log", "text/plain", 2, b"hi")]
    finish(store, result("t1", attempt, attachments=files))
    finish(store, result("t1", attempt, attachments=files))
    _, attached, tried = store.task_detail("t1")
    assert [a.filename for a in attached] == ["log.txt"]
    assert [(a.number, a.outcome) for a in tried] == [(1, Outcome.SUCCEEDED)]


def test_a_start_of_a_batch_where_one_task_moved_on_starts_the_rest(store: Service) -> None:
    for task_id in ("t1", "t2", "t3"):
        submit_one(store, task_id, record_id=f"r-{task_id}")
    reserve(store, "t1", "t2", "t3")
    store.cancel_task("t2")
    started, _ = store.dispatch([], [(t, "n1", 1.0, 1) for t in ("t1", "t2", "t3")], [])
    assert started == ["t1", "t3"]
    assert start(store, "t2") == []


def test_a_second_machine_is_refused_on_sqlite_and_welcome_on_postgresql(
    store: Service, other: Service
) -> None:
    with store.engine.begin() as conn:
        masters_db.register(conn, "elsewhere:1:cafe", "elsewhere", 1, "another-boot/pid:[1]", 15)
    if store.engine.dialect.name == "sqlite":
        with pytest.raises(ConfigError, match=r"another machine.*PostgreSQL"):
            other.register_dispatcher(15)
        assert [d.host for d in store.dispatchers()] == ["elsewhere"]
    else:
        other.register_dispatcher(15)
        assert len(store.dispatchers()) == 2


def test_several_dispatchers_of_one_machine_share_any_store(store: Service, other: Service) -> None:
    store.register_dispatcher(15)
    other.register_dispatcher(15)
    assert len(store.dispatchers()) == 2


def test_the_claims_a_beat_reads_come_from_the_index_of_claims_not_the_waiting_tasks(
    store: Service,
) -> None:
    # Read every second by every master: through the waiting tasks' index it took 30 ms with
    # 15,000 tasks waiting, and grew with the backlog.
    store.submit_tasks("r1", ["examples.simple"] * 50)
    with store.engine.connect() as conn:
        statement = masters_db.CLAIM_OWNERS.compile(conn)
        explain = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
        plan = conn.exec_driver_sql(explain + str(statement), tuple(statement.params.values()))
        shown = " ".join(str(row) for row in plan)
    if store.engine.dialect.name == "sqlite":
        assert "ix_tasks_claims" in shown, shown
    else:
        assert "ix_tasks_waiting" not in shown, shown
