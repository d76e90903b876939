"""Two dispatchers on one store: every task runs exactly once (atomic reservations and starts)."""

from __future__ import annotations

from dirt.config import Settings
from dirt.dispatch.runner import probe
from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_finished


def test_two_dispatchers_never_run_a_task_twice(store_settings: Settings) -> None:
    store_settings.dispatch.isolation = "thread"
    first, second = Service(store_settings), Service(store_settings)
    info = probe("local", store_settings.nodes)
    first.save_node("local", info, slots=2)
    first.save_node("localhost", info, slots=2)
    masters = [RunningDispatcher(first), RunningDispatcher(second)]
    try:
        docs = [{"_id": "r", "type": "record"}] + [
            {"type": "task", "record_id": "r", "name": "examples.simple"} for _ in range(300)
        ]
        ids = [t.id for t in first.submit(docs).tasks]
        tasks = wait_finished(first, ids, timeout=120)
    finally:
        for master in masters:
            master.stop()
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    assert {t.attempts for t in tasks} == {1}
    attempts = first.record_detail("r").attempts
    assert all(len(attempts[t.id]) == 1 for t in tasks)
    first.close()
    second.close()
