"""Why a waiting task waits: each reason in its situation, and gone once it stops being true,
read the way users read it (the service, `dirt status --json`), with a real dispatcher and real
local nodes, on SQLite and PostgreSQL. Then the wording, from snapshots (no I/O)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dirt.dispatch.reasons import Situation, explain
from dirt.dispatch.runner import probe
from dirt.dispatch.select import NodeView
from dirt.models import DispatcherInfo, Task, TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, run_dirt, wait_finished, wait_for

HOLD = (
    "import os, time\n"
    "def execute(flag):\n"
    "    while not os.path.exists(flag):\n"
    "        time.sleep(0.01)\n"
    "    return {'success': True}\n"
)
NO_DISPATCHER_YET = (
    "no dispatcher is running (none has run on this store yet): start one with `dirt serve`"
)
GPU = {"platform": "linux", "cpu_count": 1, "environ": {"GPU": "1"}}


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    return {"dispatch": {"poll_interval": 0.02, "isolation": "thread"}, "log": {"file": ""}}


@pytest.fixture
def local(store: Service, add_task_module: Callable[[str, str], str]) -> str:
    """This machine as node 'local' with one slot; the task module `hold` waits for a file."""
    add_task_module("hold", HOLD)
    store.save_node("local", probe("local", store.settings.nodes), slots=1)
    return "local"


@pytest.fixture
def running(
    store: Service, start_dispatcher: Callable[[Service], RunningDispatcher]
) -> Callable[[], RunningDispatcher]:
    """Start a dispatcher on the store."""
    return lambda: start_dispatcher(store)


def reason_of(store: Service, task_id: str) -> str | None:
    return store.task(task_id).waiting_reason


def says(store: Service, task_id: str, reason: str, timeout: float = 15) -> None:
    wait_for(lambda: reason_of(store, task_id) == reason, timeout, what=repr(reason))


def hold_and_queue(store: Service, flag: Path) -> None:
    """Record a: a task that holds the one slot until `flag` exists, then two; b: two."""
    docs: list[dict[str, Any]] = [
        {"_id": "a", "type": "record", "created": 1},
        {"_id": "b", "type": "record", "created": 2},
    ]
    for i in range(3):
        name = "hold" if i == 0 else "examples.simple"
        kwargs = {"flag": str(flag)} if i == 0 else None
        docs.append(
            {
                "_id": f"a{i}",
                "type": "task",
                "record_id": "a",
                "name": name,
                "kwargs": kwargs,
                "created": 10 + i,
            }
        )
    for i in range(2):
        docs.append(
            {
                "_id": f"b{i}",
                "type": "task",
                "record_id": "b",
                "name": "examples.simple",
                "created": 20 + i,
            }
        )
    store.submit(docs)


def test_a_task_says_no_dispatcher_runs_until_one_does(
    store: Service, local: str, running: Callable[[], RunningDispatcher], tmp_path: Path
) -> None:
    hold_and_queue(store, tmp_path / "go")
    assert {t.waiting_reason for t in store.record_detail("b").tasks} == {NO_DISPATCHER_YET}
    running()
    says(store, "b0", "queued: next in line; its matching node local is busy: 1/1 slots")


def test_a_stopped_dispatcher_is_named_with_when_it_was_last_seen(
    store: Service, local: str, running: Callable[[], RunningDispatcher], tmp_path: Path
) -> None:
    hold_and_queue(store, tmp_path / "go")
    dispatcher = running()
    says(store, "b0", "queued: next in line; its matching node local is busy: 1/1 slots")
    dispatcher.stop()
    for task in store.record_detail("b").tasks:
        assert re.fullmatch(
            r"no dispatcher is running \(none seen for \d+ s\): start one with `dirt serve`",
            task.waiting_reason or "",
        )


def test_a_queued_task_says_how_many_tasks_are_ahead_and_that_the_slots_are_full(
    store: Service, local: str, running: Callable[[], RunningDispatcher], tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    hold_and_queue(store, flag)
    running()
    busy = "its matching node local is busy: 1/1 slots"
    # a0 holds the slot; the rest wait in turns: b0, a1, b1, a2.
    says(store, "a2", f"queued: 3 tasks ahead; {busy}")
    assert [reason_of(store, t) for t in ("b0", "a1", "b1")] == [
        f"queued: next in line; {busy}",
        f"queued: 1 task ahead; {busy}",
        f"queued: 2 tasks ahead; {busy}",
    ]
    status = run_dirt(
        "--project",
        str(store.settings.project_dir),
        "status",
        "a",
        "--json",
        env={"DIRT_DATABASE_URL": store.settings.database_url},
    )
    shown = {t["_id"]: t["reason"] for t in json.loads(status.stdout)["tasks"]}
    assert shown["a1"] == f"queued: 1 task ahead; {busy}" and shown["a0"] is None
    flag.touch()
    done = wait_finished(store, ["a0", "a1", "a2", "b0", "b1"])
    assert {(t.state, t.waiting_reason) for t in done} == {(TaskState.SUCCEEDED, None)}


def test_a_task_no_node_can_run_says_which_requirement_then_names_its_nodes(
    store: Service, local: str, running: Callable[[], RunningDispatcher]
) -> None:
    running()
    [task] = store.submit_tasks("r", ["examples.simple"], requires=["GPU in environ"]).tasks
    says(store, task.id, "no node has GPU in environ; 1 node checked")
    # A node that has a GPU but cannot be reached: the dispatcher tries it and says so.
    store.save_node("gpu-box.invalid", GPU)
    says(store, task.id, "its only matching node gpu-box.invalid is offline", timeout=40)
    store.set_node_enabled("gpu-box.invalid", False)
    says(
        store,
        task.id,
        "its only matching node gpu-box.invalid is disabled: `dirt nodes enable gpu-box.invalid`",
    )
    store.remove_node("gpu-box.invalid")
    says(store, task.id, "no node has GPU in environ; 1 node checked")
    assert store.task(task.id).state is TaskState.WAITING


# ---- the wording, from snapshots ---------------------------------------------------------------


def situation(
    nodes: list[NodeView],
    ahead: tuple[int | None, int] = (0, 0),
    dispatchers: list[DispatcherInfo] | None = None,
    now: float = 1000.0,
) -> Situation:
    if dispatchers is None:
        dispatchers = [DispatcherInfo("d", "host", 1, 0.0, now - 1)]
    return Situation(now, dispatchers, nodes, lambda _task: ahead)


def view(address: str, slots: int = 4, running: int = 4, **state: Any) -> NodeView:
    return NodeView(address, {"platform": "linux"}, slots, running=running, **state)


TASK = Task(id="t", record_id="r", name="examples.simple")


def test_a_long_queue_is_counted_up_to_a_thousand() -> None:
    reason = explain(TASK, situation([view("n1"), view("n2")], ahead=(None, 0)))
    assert reason == "queued: more than 1,000 tasks ahead; all 2 matching nodes busy: 8/8 slots"


def test_tasks_of_higher_priority_are_counted_apart() -> None:
    reason = explain(TASK, situation([view("n1", slots=2, running=1)], ahead=(12, 3)))
    assert reason == (
        "queued: 12 tasks ahead (and 3 of higher priority); 1/2 slots busy on its matching node n1"
    )
    reason = explain(TASK, situation([view("n1"), view("n2", running=1)], ahead=(0, 1000)))
    assert reason == (
        "queued: first at its priority (and more than 1,000 of higher priority); "
        "5/8 slots busy on its 2 matching nodes"
    )


def test_a_dispatcher_not_seen_lately_is_not_running() -> None:
    stale = DispatcherInfo("d", "host", 1, 0.0, last_seen=1000.0 - 42)
    assert explain(TASK, situation([view("n1")], dispatchers=[stale])) == (
        "no dispatcher is running (none seen for 42 s): start one with `dirt serve`"
    )
    stopped = DispatcherInfo("d", "host", 1, 0.0, last_seen=1000.0 - 7200, stopped=1.0)
    assert "none seen for 2 h" in explain(TASK, situation([view("n1")], dispatchers=[stopped]))


def test_requirements_no_node_meets_come_before_the_dispatcher() -> None:
    wants = Task(id="t", record_id="r", name="x", requires=["architecture is sparc"])
    reason = explain(wants, situation([view("n1")], dispatchers=[]))
    assert reason == "no node has architecture sparc; 1 node checked"
