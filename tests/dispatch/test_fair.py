"""Fair share between records, through a running dispatcher on a real local node, on SQLite
and PostgreSQL: records take turns for the slots, a share weighs the turns, a record submitted
later starts at once, priority still wins; fifo keeps the oldest task first."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from dirt.dispatch.runner import probe
from dirt.models import Task
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_finished, wait_for

NAP = "import time\ndef execute(s=0.03):\n    time.sleep(s)\n    return {'success': True}\n"


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    return {"dispatch": {"poll_interval": 0.02, "isolation": "thread"}, "log": {"file": ""}}


@pytest.fixture
def node(store: Service, add_task_module: Callable[[str, str], str]) -> Callable[[int], None]:
    """Add this machine as node 'local' with the given slots; the task module `nap`."""
    add_task_module("nap", NAP)

    def add(slots: int) -> None:
        store.save_node("local", probe("local", store.settings.nodes), slots=slots)

    return add


@pytest.fixture
def running(
    store: Service, start_dispatcher: Callable[[Service], RunningDispatcher]
) -> Callable[[], RunningDispatcher]:
    """Start a dispatcher on the store."""
    return lambda: start_dispatcher(store)


def add(store: Service, record: str, n: int, share: int | None = None, **task: Any) -> list[str]:
    extra = {"share": share} if share is not None else None
    return [t.id for t in store.submit_tasks(record, ["nap"] * n, extra=extra, **task).tasks]


def start_order(tasks: list[Task]) -> list[str]:
    """Record ids in the order their tasks started."""
    return [t.record_id for t in sorted(tasks, key=lambda t: (t.started or 0, t.id))]


def most_apart(
    order: list[str], records: list[str], weights: dict[str, int] | None = None
) -> float:
    """Over every prefix of the start order: how far apart the records' turns got, in tasks."""
    weights = weights or {}
    seen: Counter[str] = Counter()
    worst = 0.0
    for record in order:
        seen[record] += 1
        rounds = [seen[r] / weights.get(r, 1) for r in records]
        worst = max(worst, (max(rounds) - min(rounds)) * max(weights.values(), default=1))
    return worst


@pytest.mark.parametrize("records", [["a", "b"], ["a", "b", "c"]])
def test_records_share_the_slots_evenly(
    store: Service,
    node: Callable[[int], None],
    running: Callable[[], RunningDispatcher],
    records: list[str],
) -> None:
    node(len(records))
    ids = [t for r in records for t in add(store, r, 12)]
    running()
    order = start_order(wait_finished(store, ids))
    # Until one record runs out, no record is ever more than one task ahead of another.
    assert most_apart(order[: 12 * len(records) - 2], records) <= 1, order


def test_a_record_with_share_two_gets_two_slots_to_anothers_one(
    store: Service, node: Callable[[int], None], running: Callable[[], RunningDispatcher]
) -> None:
    node(3)
    ids = add(store, "heavy", 16, share=2) + add(store, "light", 8)
    running()
    order = start_order(wait_finished(store, ids))
    assert most_apart(order[:21], ["heavy", "light"], {"heavy": 2, "light": 1}) <= 2, order
    assert Counter(order[:12]) == {"heavy": 8, "light": 4}


def test_a_record_submitted_behind_a_long_one_starts_within_a_task(
    store: Service, node: Callable[[int], None], running: Callable[[], RunningDispatcher]
) -> None:
    node(2)
    long = add(store, "long", 40, kwargs={"s": 0.1})
    running()
    wait_for(
        lambda: store.record_summary("long").counts["succeeded"] >= 4, what="the long record to run"
    )
    (quick,) = add(store, "quick", 1)
    submitted = time.time()
    [task] = wait_finished(store, [quick])
    assert task.started is not None and task.started - submitted < 1.0
    ahead = [t for t in store.tasks(long) if t.started and submitted < t.started < task.started]
    # Slots free one at a time: one task of the long record per slot at most may start first
    # (one more when the dispatcher's step and the freeing of a slot cross).
    assert len(ahead) <= 3, [t.id for t in ahead]
    wait_finished(store, long)


def test_priority_wins_over_turns(
    store: Service, node: Callable[[int], None], running: Callable[[], RunningDispatcher]
) -> None:
    node(1)
    ids = add(store, "a", 4) + add(store, "b", 4) + add(store, "urgent", 2, priority=5)
    running()
    order = start_order(wait_finished(store, ids))
    assert order[:2] == ["urgent", "urgent"] and most_apart(order[2:], ["a", "b"]) <= 1, order


def test_fifo_runs_the_oldest_tasks_first(
    store: Service, node: Callable[[int], None], running: Callable[[], RunningDispatcher]
) -> None:
    store.settings.dispatch.order = "fifo"
    node(1)
    ids = add(store, "first", 5) + add(store, "second", 3)
    running()
    assert start_order(wait_finished(store, ids)) == ["first"] * 5 + ["second"] * 3
