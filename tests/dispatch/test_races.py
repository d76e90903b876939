"""The loop and the nodes' receiver threads share the slot bookkeeping and the connections:
whatever they do at the same moment, no outcome is lost and no task runs twice."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dirt.dispatch.runner import probe
from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_finished, wait_for

NAP = "import time\ndef execute():\n    time.sleep(0.4)\n    return {'success': True}\n"


def one_slot_node(service: Service) -> None:
    service.save_node("local", probe("local", service.settings.nodes), slots=1)


def submit(service: Service, *names: str) -> list[str]:
    return [t.id for t in service.submit_tasks("r1", list(names)).tasks]


def test_a_module_that_cannot_be_read_fails_and_the_run_that_freed_its_slot_is_stored(
    service: Service, add_task_module: Callable[[str, str], str], project: Path
) -> None:
    one_slot_node(service)
    add_task_module("nap", NAP)
    add_task_module("gone_odd", "def execute():\n    return {'success': True}\n")
    running = RunningDispatcher(service)
    try:
        (nap,) = submit(service, "nap")
        wait_for(lambda: service.task(nap).state is TaskState.RUNNING, what="nap to start")
        # Reserved while nap runs; started on nap's receiver thread the moment nap ends. By
        # then its file has become a folder: it cannot be read when its turn comes.
        (odd,) = submit(service, "gone_odd")
        module = project / "tasks" / "gone_odd.py"
        module.unlink()
        module.mkdir()
        done = wait_finished(service, [nap, odd], timeout=15)
    finally:
        running.stop()
    assert done[0].state is TaskState.SUCCEEDED
    assert done[1].state is TaskState.FAILED
    assert done[1].reason.startswith("task module gone_odd cannot be read: [Errno 21]")


def test_an_error_while_refilling_a_freed_slot_never_loses_the_outcome_that_freed_it(
    service: Service,
    add_task_module: Callable[[str, str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one_slot_node(service)
    add_task_module("nap", NAP)
    running = RunningDispatcher(service)
    dispatcher = running.dispatcher
    start_reserved = dispatcher._start_reserved

    def failing_refill(only: str | None = None) -> int:
        if only is not None:  # on a receiver thread, refilling the slot a task just freed
            raise RuntimeError("refill failed")
        return start_reserved(only)

    monkeypatch.setattr(dispatcher, "_start_reserved", failing_refill)
    try:
        tasks = wait_finished(service, submit(service, "nap", "nap"), timeout=15)
    finally:
        running.stop()
    assert [t.state for t in tasks] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED]
    assert [t.attempts for t in tasks] == [1, 1]


def test_nodes_disabled_and_enabled_while_tasks_run_lose_nothing_and_run_nothing_twice(
    service: Service,
) -> None:
    service.settings.dispatch.isolation = "thread"
    info = probe("local", service.settings.nodes)
    service.save_node("local", info, slots=2)
    service.save_node("localhost", info, slots=2)
    running = RunningDispatcher(service)
    stop = threading.Event()

    def flip() -> None:
        # Each change closes the idle node's connection or opens a new one, while the
        # receiver threads of both nodes keep refilling their slots.
        enabled = True
        while not stop.wait(0.01):
            enabled = not enabled
            service.set_node_enabled("localhost", enabled)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        ids = submit(service, *["examples.simple"] * 200)
        tasks = wait_finished(service, ids, timeout=60)
    finally:
        stop.set()
        flipper.join()
        running.stop()
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    assert {t.attempts for t in tasks} == {1}
    attempts = service.record_detail("r1").attempts
    assert all(len(attempts[t.id]) == 1 for t in tasks)
