"""Several `dirt serve` processes on a real PostgreSQL: one killed with -9, the store restarted
under them, a rolling restart by SIGTERM, three sharing six nodes. Every task ends succeeded and
is stored once; a 2-slot node never runs 3 tasks at once (measured on the node: each task notes
when it runs). A master killed with -9 runs in a pid namespace of its own, so the survivor knows
it dead only when its lease runs out, as with a master on another machine."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dirt.config import Settings, load_settings
from dirt.db import masters as masters_db
from dirt.models import Outcome, TaskState
from dirt.service import Service
from tests.conftest import need, run_dirt, wait_finished, wait_for
from tests.dispatch.masters import (
    MARK_TASK,
    Master,
    add_nodes,
    mark_tasks,
    master_env,
    most_at_once,
    shares,
)
from tests.postgres import PostgresServer, find_bin

LEASE = 2.0


class Cluster:
    """A project on a PostgreSQL database, its nodes, and the masters started on it."""

    def __init__(self, project: Path, database_url: str, **dispatch: Any) -> None:
        self.project = project
        self.env = master_env(
            database_url, lease=LEASE, isolation="thread", poll_interval=0.02, **dispatch
        )
        overrides = {"project": {"database_url": database_url}, "log": {"file": ""}}
        self.service = Service(load_settings(project, overrides=overrides, environ={}))
        (project / "tasks" / "mark.py").write_text(MARK_TASK)
        self.marks = project / "marks"
        self.marks.mkdir()
        self.masters: list[Master] = []

    def start(self, name: str, own_machine: bool = False) -> Master:
        master = Master(self.project, self.env, name, own_machine)
        self.masters.append(master)
        wait_for(
            lambda: master.id in {d.id for d in self.service.dispatchers()},
            timeout=60,
            what=f"master {name} to register",
        )
        return master

    def driven_by(self, master: Master) -> list[str]:
        found = [d.nodes for d in self.service.dispatchers() if d.id == master.id]
        return found[0] if found else []

    def check_once(self, ids: list[str]) -> None:
        """Every task succeeded, stored once: one succeeded attempt, any others lost."""
        tasks = self.service.tasks(ids)
        assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
        for task in tasks:
            tried = [a.outcome for a in self.service.task_detail(task.id)[2]]
            assert tried.count(Outcome.SUCCEEDED) == 1, (task.id, tried)
            assert set(tried) <= {Outcome.SUCCEEDED, Outcome.LOST}, (task.id, tried)

    def close(self) -> None:
        for master in self.masters:
            master.close()
        self.service.close()


@pytest.fixture
def cluster(postgres_server: Any, project: Path) -> Iterator[Cluster]:
    made = Cluster(project, postgres_server.new_database(), stop_grace=30)
    yield made
    made.close()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to restart under the masters."""
    need(find_bin("initdb") is not None and find_bin("pg_ctl") is not None, "PostgreSQL")
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.mark.postgres
def test_a_master_killed_with_9_is_taken_over_when_its_lease_runs_out(cluster: Cluster) -> None:
    need(shutil.which("unshare") is not None, "unshare (util-linux)")
    pins = add_nodes(cluster.service, 4)
    cluster.start("survivor")
    victim = cluster.start("victim", own_machine=True)
    wait_for(lambda: shares(cluster.service) == [2, 2], timeout=30, what="two nodes each")
    theirs = cluster.driven_by(victim)
    ids = mark_tasks(cluster.service, "r", pins, 8, cluster.marks, seconds=0.5)
    wait_for(
        lambda: any(
            t.state is TaskState.RUNNING and t.node in theirs for t in cluster.service.tasks(ids)
        ),
        what="the victim running tasks",
    )
    victim.kill()
    killed = time.time()

    def restarted() -> float | None:
        starts = [
            a.started
            for t in ids
            for a in cluster.service.task_detail(t)[2]
            if a.node in theirs and a.started > killed
        ]
        return min(starts) if starts else None

    first = wait_for(restarted, timeout=LEASE + 20, what="the victim's nodes to run again")
    wait_finished(cluster.service, ids, timeout=90)
    cluster.check_once(ids)
    assert any(
        Outcome.LOST in [a.outcome for a in cluster.service.task_detail(t)[2]] for t in ids
    ), "the victim's running tasks are lost attempts"
    assert max(most_at_once(cluster.marks, pin) for pin in pins) <= 2
    assert first - killed <= LEASE + 5
    assert "is dead (its lease ran out" in cluster.masters[0].output()


@pytest.mark.postgres
def test_a_master_killed_with_9_on_the_same_machine_is_taken_over_at_once(
    cluster: Cluster,
) -> None:
    """Its pid is seen gone, so no lease to wait: the survivor drives its nodes at once, while
    the dead master's node processes (in sessions of their own) may still be ending."""
    pins = add_nodes(cluster.service, 4)
    cluster.start("survivor")
    victim = cluster.start("victim")
    wait_for(lambda: shares(cluster.service) == [2, 2], timeout=30, what="two nodes each")
    theirs = cluster.driven_by(victim)
    ids = mark_tasks(cluster.service, "r", pins, 8, cluster.marks, seconds=0.5)
    wait_for(
        lambda: (
            sum(
                t.state is TaskState.RUNNING and t.node in theirs
                for t in cluster.service.tasks(ids)
            )
            == 4
        ),
        what="the victim running a task in each of its slots",
    )
    victim.kill()
    wait_for(lambda: shares(cluster.service) == [4], timeout=LEASE + 5, what="the takeover")
    wait_finished(cluster.service, ids, timeout=90)
    cluster.check_once(ids)
    assert max(most_at_once(cluster.marks, pin) for pin in pins) <= 2
    assert "is dead (its process (pid" in cluster.masters[0].output()


@pytest.mark.postgres
def test_a_restart_of_the_store_loses_nothing_and_kills_nothing(
    own_postgres: PostgresServer, project: Path
) -> None:
    cluster = Cluster(project, own_postgres.new_database())
    try:
        pins = add_nodes(cluster.service, 4)
        masters = [cluster.start("a"), cluster.start("b")]
        wait_for(lambda: shares(cluster.service) == [2, 2], timeout=30, what="two nodes each")
        ids = mark_tasks(cluster.service, "r", pins, 6, cluster.marks, seconds=1.0)
        wait_for(
            lambda: sum(t.state is TaskState.RUNNING for t in cluster.service.tasks(ids)) == 8,
            what="every slot busy",
        )
        own_postgres.stop_server()
        time.sleep(LEASE + 1.5)  # every lease runs out while the store is away
        own_postgres.start_server()
        wait_finished(cluster.service, ids, timeout=90)
        for master in masters:
            assert master.process.poll() is None, master.output()
            assert "the store is back" in master.output()
        tasks = cluster.service.tasks(ids)
        assert {(t.state, t.attempts) for t in tasks} == {(TaskState.SUCCEEDED, 1)}
        cluster.check_once(ids)
        assert max(most_at_once(cluster.marks, pin) for pin in pins) <= 2
    finally:
        cluster.close()


@pytest.mark.postgres
def test_a_rolling_restart_by_sigterm_kills_no_task(cluster: Cluster) -> None:
    pins = add_nodes(cluster.service, 4)
    first, second = cluster.start("first"), cluster.start("second")
    wait_for(lambda: shares(cluster.service) == [2, 2], timeout=30, what="two nodes each")
    ids = mark_tasks(cluster.service, "r", pins, 8, cluster.marks, seconds=0.6)
    wait_for(
        lambda: any(t.state is TaskState.RUNNING for t in cluster.service.tasks(ids)),
        what="tasks running",
    )
    first.terminate()
    assert first.wait() == 0, first.output()
    wait_for(lambda: shares(cluster.service) == [4], what="every node with the second")
    third = cluster.start("third")
    wait_for(lambda: shares(cluster.service) == [2, 2], timeout=30, what="two nodes each again")
    second.terminate()
    assert second.wait() == 0, second.output()
    wait_finished(cluster.service, ids, timeout=90)
    tasks = cluster.service.tasks(ids)
    assert {(t.state, t.attempts) for t in tasks} == {(TaskState.SUCCEEDED, 1)}
    assert max(most_at_once(cluster.marks, pin) for pin in pins) <= 2
    assert "Handed over node(s)" in first.output()
    assert third.process.poll() is None


@pytest.mark.postgres
def test_three_masters_share_six_nodes_evenly(cluster: Cluster) -> None:
    pins = add_nodes(cluster.service, 6)
    masters = [cluster.start(name) for name in ("a", "b", "c")]
    wait_for(lambda: shares(cluster.service) == [2, 2, 2], timeout=30, what="two nodes each")
    ids = mark_tasks(cluster.service, "r", pins, 3, cluster.marks, seconds=0.2)
    wait_finished(cluster.service, ids, timeout=90)
    cluster.check_once(ids)
    ran = {t.node for t in cluster.service.tasks(ids)}
    assert ran == set(pins)
    masters[0].terminate()
    assert masters[0].wait() == 0
    wait_for(lambda: shares(cluster.service) == [3, 3], timeout=30, what="three nodes each")


def test_a_second_machine_on_a_sqlite_store_is_refused_with_a_reason(
    settings: Settings, project: Path
) -> None:
    service = Service(settings)
    try:
        with service.engine.begin() as conn:
            masters_db.register(conn, "build2:7:cafe", "build2", 7, "other-boot/pid:[1]", 60)
    finally:
        service.close()
    result = run_dirt("serve", "--no-web", cwd=project, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "in use by dispatcher build2:7:cafe on host build2, another machine" in result.stderr
    assert "PostgreSQL" in result.stderr
