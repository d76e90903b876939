"""Slot bookkeeping: held, in-flight and to-start tasks, and each node's running count."""

from __future__ import annotations

import threading

from dirt.dispatch.select import NodeView
from dirt.dispatch.slots import Slots
from dirt.models import Task


def task(
    task_id: str, priority: int = 0, created: float = 0.0, platform: str | None = None
) -> Task:
    return Task(
        id=task_id,
        record_id="r",
        name="examples.simple",
        priority=priority,
        created=created,
        platform=platform,
    )


def view(address: str = "a", platform: str = "linux") -> NodeView:
    return NodeView(address=address, sys_info={"platform": platform}, slots=2)


def slots_with(*tasks: Task) -> Slots:
    slots = Slots(threading.RLock())
    slots.hold(tasks)
    return slots


def launched(slots: Slots, address: str = "a") -> str:
    """Launch the next held task on `address`; returns its id."""
    held = slots.take(view(address))
    assert held is not None
    slots.launch(held, address, "sha", None)
    return held.id


def test_a_launched_task_takes_a_slot_and_waits_for_its_start_to_be_written() -> None:
    slots = slots_with(task("t1"))
    launched(slots)
    assert slots.running("a") == 1 and not slots.has_held()
    (start,) = slots.take_starts()
    assert start.start == ("t1", "a", start.started, 1)
    assert slots.take_starts() == []


def test_the_attempt_is_one_more_than_the_tasks_attempts_so_far() -> None:
    retried = task("t1")
    retried.attempts = 2
    slots = slots_with(retried)
    launched(slots)
    flight = slots.flight("t1")
    assert flight is not None and flight.attempt == 3


def test_an_outcome_frees_the_slot_once_and_names_the_node_to_refill() -> None:
    slots = slots_with(task("t1"))
    launched(slots)
    assert slots.outcome_arrived("t1") == "a"
    assert slots.running("a") == 0
    assert slots.outcome_arrived("t1") is None  # a second report frees nothing
    flight = slots.finish("t1")
    assert flight is not None and slots.running("a") == 0
    assert slots.flight("t1") is None


def test_storing_an_outcome_frees_the_slot_when_the_receiver_did_not() -> None:
    slots = slots_with(task("t1"))
    launched(slots)
    assert slots.finish("t1") is not None
    assert slots.running("a") == 0
    assert slots.finish("t1") is None


def test_an_outcome_of_a_task_not_in_flight_is_ignored() -> None:
    slots = slots_with()
    assert slots.outcome_arrived("nope") is None
    assert slots.finish("nope") is None


def test_held_tasks_keep_reservation_order_across_priorities() -> None:
    slots = slots_with(task("old", created=1), task("new", created=2))
    slots.hold([task("urgent", priority=5, created=3)])
    order = []
    while (next_task := slots.take(view())) is not None:
        order.append(next_task.id)
    assert order == ["urgent", "old", "new"]


def test_take_skips_held_tasks_the_node_cannot_run() -> None:
    slots = slots_with(task("mac", platform="osx"), task("any"))
    taken = slots.take(view(platform="linux"))
    assert taken is not None and taken.id == "any"
    assert slots.take(view(platform="linux")) is None
    assert slots.has_held()


def test_unhold_gives_back_the_tasks_no_node_can_run() -> None:
    slots = slots_with(task("mac", platform="osx"), task("any"))
    stuck = slots.unhold(lambda t: t.platform is None)
    assert [t.id for t in stuck] == ["mac"]
    assert slots.busy() == 1


def test_busy_counts_held_and_running_tasks() -> None:
    slots = slots_with(task("t1"), task("t2"), task("t3"))
    launched(slots)
    assert slots.busy() == 3


def test_a_lost_node_takes_every_task_on_it_out_of_flight_naming_the_unwritten_starts() -> None:
    slots = slots_with(task("written"), task("unwritten"), task("elsewhere"))
    launched(slots, "a")
    slots.take_starts()  # the loop wrote the first start
    launched(slots, "a")
    launched(slots, "b")
    lost, unwritten = slots.lose_node("a", ["written"])
    assert [f.task.id for f in lost] == ["unwritten", "written"]
    assert [f.task.id for f in unwritten] == ["unwritten"]
    assert slots.running("a") == 0 and slots.running("b") == 1
    assert not slots.has_held()
    assert [f.task.id for f in slots.take_starts()] == ["elsewhere"]


def test_a_start_whose_outcome_is_being_stored_stays_when_its_node_is_lost() -> None:
    slots = slots_with(task("quick"))
    launched(slots, "a")
    slots.finish("quick")  # its outcome was collected in this step, its start not yet written
    assert slots.lose_node("a", []) == ([], [])
    assert [f.task.id for f in slots.take_starts()] == ["quick"]


def test_a_lost_node_returns_tasks_in_flight_there_that_it_did_not_report() -> None:
    slots = slots_with(task("t1"))
    launched(slots, "a")
    slots.take_starts()
    lost, unwritten = slots.lose_node("a", [])
    assert [f.task.id for f in lost] == ["t1"] and unwritten == []


def test_a_start_the_store_refused_leaves_flight_and_frees_its_slot() -> None:
    slots = slots_with(task("ok"), task("cancelled"))
    launched(slots)
    launched(slots)
    starts = slots.take_starts()
    refused = slots.refused(starts, ["ok"])
    assert [f.task.id for f in refused] == ["cancelled"]
    assert slots.running("a") == 1 and slots.flight("cancelled") is None


def test_unrunnable_tasks_are_handed_to_the_loop_once() -> None:
    slots = slots_with()
    slots.unrunnable(task("gone"), "task module gone not found")
    assert [(t.id, r) for t, r in slots.take_unrunnable()] == [
        ("gone", "task module gone not found")
    ]
    assert slots.take_unrunnable() == []


def test_drain_takes_every_task_in_flight() -> None:
    slots = slots_with(task("t1"), task("t2"))
    launched(slots, "a")
    launched(slots, "b")
    assert sorted(f.task.id for f in slots.drain()) == ["t1", "t2"]
    assert slots.drain() == []
