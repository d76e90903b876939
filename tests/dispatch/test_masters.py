"""Several dispatchers on one store, in-process, on SQLite and a real PostgreSQL: each drives its
share of the nodes, reserves only what those can run, hands nodes over without killing a task,
and joins again after it was taken over. (Dispatchers in processes of their own, killed and cut
off from the store: test_masters_serve.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dirt.config import Settings
from dirt.db import masters as masters_db
from dirt.db.schema import tasks as tasks_table
from dirt.models import Outcome, TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_finished, wait_for
from tests.dispatch.masters import MARK_TASK, add_nodes, mark_tasks, most_at_once, shares


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    return {
        "dispatch": {"poll_interval": 0.02, "lease": 1.0, "isolation": "thread"},
        "log": {"file": ""},
    }


@pytest.fixture
def masters(store_settings: Settings) -> Iterator[Callable[[], Service]]:
    """Makes the services of further masters on the store; closes them at the end."""
    made: list[Service] = []

    def make() -> Service:
        made.append(Service(store_settings))
        return made[-1]

    yield make
    for service in made:
        service.close()


@pytest.fixture
def marks(tmp_path: Path, store_settings: Settings) -> Path:
    (store_settings.tasks_dir / "mark.py").write_text(MARK_TASK)
    folder = tmp_path / "marks"
    folder.mkdir()
    return folder


def stop_all(*running: RunningDispatcher) -> None:
    for each in running:
        if each.thread.is_alive():
            each.stop()


def test_two_dispatchers_drive_two_of_four_nodes_each(
    masters: Callable[[], Service], marks: Path
) -> None:
    first, second = masters(), masters()
    pins = add_nodes(first, 4)
    running = [RunningDispatcher(first), RunningDispatcher(second)]
    try:
        wait_for(lambda: shares(first) == [2, 2], what="two nodes each")
        ids = mark_tasks(first, "r", pins, 4, marks, seconds=0.1)
        tasks = wait_finished(first, ids, timeout=60)
    finally:
        stop_all(*running)
    assert {(t.state, t.attempts) for t in tasks} == {(TaskState.SUCCEEDED, 1)}
    assert {t.node for t in tasks} == set(pins)
    assert max(most_at_once(marks, pin) for pin in pins) <= 2


def test_a_dispatcher_that_starts_gets_its_share_and_no_task_is_killed(
    masters: Callable[[], Service], marks: Path
) -> None:
    first, second, third = masters(), masters(), masters()
    pins = add_nodes(first, 4)
    running = [RunningDispatcher(first), RunningDispatcher(second)]
    try:
        wait_for(lambda: shares(first) == [2, 2], what="two nodes each")
        ids = mark_tasks(first, "r", pins, 10, marks, seconds=0.3)
        running.append(RunningDispatcher(third))
        wait_for(lambda: shares(first) == [1, 1, 2], timeout=30, what="a node for the third")
        tasks = wait_finished(first, ids, timeout=60)
    finally:
        stop_all(*running)
    assert {(t.state, t.attempts) for t in tasks} == {(TaskState.SUCCEEDED, 1)}
    assert max(most_at_once(marks, pin) for pin in pins) <= 2


def test_a_stopping_dispatcher_lets_its_tasks_finish_and_hands_its_nodes_over(
    masters: Callable[[], Service], marks: Path
) -> None:
    first, second = masters(), masters()
    pins = add_nodes(first, 4)
    staying, leaving = RunningDispatcher(first), RunningDispatcher(second)
    try:
        wait_for(lambda: shares(first) == [2, 2], what="two nodes each")
        ids = mark_tasks(first, "r", pins, 2, marks, seconds=1.5)
        wait_for(
            lambda: all(t.state is TaskState.RUNNING for t in first.tasks(ids)),
            what="every task running",
        )
        (leaver,) = [d for d in first.dispatchers() if d.id == second.master_id]
        theirs = [t.id for t in first.tasks(ids) if t.node in leaver.nodes]
        leaving.dispatcher.stop(grace=30)
        leaving.thread.join(30)
        assert not leaving.thread.is_alive()
        # Its tasks finished, stored by it, before it left; then its nodes moved.
        assert {t.state for t in first.tasks(theirs)} == {TaskState.SUCCEEDED}
        wait_for(lambda: shares(first) == [4], what="every node driven by the one left")
        tasks = wait_finished(first, ids, timeout=60)
    finally:
        stop_all(staying, leaving)
    assert {(t.state, t.attempts) for t in tasks} == {(TaskState.SUCCEEDED, 1)}
    assert [d.id for d in first.dispatchers()] == []


def test_a_dispatcher_reserves_only_tasks_its_nodes_can_run(
    masters: Callable[[], Service], marks: Path
) -> None:
    first, second = masters(), masters()
    add_nodes(first, 2)
    running = [RunningDispatcher(first), RunningDispatcher(second)]
    try:
        wait_for(lambda: shares(first) == [1, 1], what="one node each")
        (driver,) = [d.id for d in first.dispatchers() if "local-1" in d.nodes]
        ids = mark_tasks(first, "r", ["local-1"], 16, marks, seconds=0.1)
        query = select(tasks_table.c.claimed_by).where(
            tasks_table.c.state.in_(["waiting", "running"]), tasks_table.c.claimed_by.is_not(None)
        )
        claimants: set[str] = set()
        while not all(t.state.finished for t in first.tasks(ids)):
            with first.engine.connect() as conn:
                claimants |= set(conn.execute(query).scalars())
            time.sleep(0.01)
    finally:
        stop_all(*running)
    assert claimants == {driver}
    assert {t.node for t in first.tasks(ids)} == {"local-1"}


def test_a_dispatcher_taken_over_stops_what_it_ran_and_joins_again(
    masters: Callable[[], Service], marks: Path
) -> None:
    first, second = masters(), masters()
    pins = add_nodes(first, 2)
    running = [RunningDispatcher(first), RunningDispatcher(second)]
    try:
        wait_for(lambda: shares(first) == [1, 1], what="one node each")
        ids = mark_tasks(first, "r", pins, 3, marks, seconds=0.6)
        # Running on both nodes: the victim's connection is open when it is taken over.
        wait_for(
            lambda: {t.node for t in first.tasks(ids) if t.state is TaskState.RUNNING} == set(pins),
            what="tasks running on both nodes",
        )
        victim = second.master_id
        # As if its lease ran out while it could not reach the store: the other took over.
        with first.engine.begin() as conn:
            masters_db.unregister(conn, victim)
        first.take_over(victim, "its lease ran out (in this test)")
        wait_for(lambda: second.master_id != victim, what="the victim to join again")
        tasks = wait_finished(first, ids, timeout=60)
    finally:
        stop_all(*running)
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    for task in tasks:
        tried = first.task_detail(task.id)[2]
        assert [a.outcome for a in tried].count(Outcome.SUCCEEDED) == 1
        assert all(a.outcome in (Outcome.LOST, Outcome.SUCCEEDED) for a in tried)


@pytest.mark.postgres
def test_a_submission_from_another_process_wakes_the_dispatcher_at_once(
    postgres_server: Any, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dirt.config import load_settings
    from dirt.dispatch import loop

    monkeypatch.setattr(loop, "SAFETY_POLL_S", 60.0)  # only a notification can wake it
    overrides = {
        "project": {"database_url": postgres_server.new_database()},
        "dispatch": {"poll_interval": 30.0, "isolation": "thread"},
        "log": {"file": ""},
    }
    settings = load_settings(project, overrides=overrides, environ={})
    serving, submitting = Service(settings), Service(settings)
    add_nodes(serving, 1)
    running = RunningDispatcher(serving)
    try:
        wait_for(lambda: serving.node("local").online, what="the node to connect")
        waits = []
        for n in range(3):
            time.sleep(0.2)
            before = time.time()
            (task_id,) = [t.id for t in submitting.submit_tasks(f"r{n}", ["examples.simple"]).tasks]
            (task,) = wait_finished(submitting, [task_id], timeout=10)
            assert task.started is not None
            waits.append(task.started - before)
    finally:
        running.stop()
        serving.close()
        submitting.close()
    assert max(waits) < 1.0, waits
