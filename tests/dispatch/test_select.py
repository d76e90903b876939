"""Which waiting task goes to which node: the scheduler's pure functions."""

from __future__ import annotations

from typing import Any

from dirt.dispatch.select import (
    NodeView,
    fill_order,
    pick,
    reservation_key,
    satisfies,
    to_reserve,
    waiting_reason,
)
from dirt.models import Task

LINUX = {"platform": "linux", "architecture": "x86_64", "environ": {"G4INSTALL": "/g4"}}
MAC = {"platform": "darwin", "architecture": "arm64", "environ": {}}


def task(
    task_id: str = "t",
    requires: list[str] | None = None,
    platform: str | None = None,
    priority: int = 0,
    created: float = 0.0,
) -> Task:
    return Task(
        id=task_id,
        record_id="r",
        name="examples.simple",
        requires=requires or [],
        platform=platform,
        priority=priority,
        created=created,
    )


def node(address: str = "a", sys_info: dict[str, Any] | None = None, **state: Any) -> NodeView:
    return NodeView(
        address=address, sys_info=sys_info or LINUX, slots=state.pop("slots", 2), **state
    )


# ---- NodeView ----------------------------------------------------------------------------


def test_a_node_offers_its_slots_minus_what_runs() -> None:
    assert node(slots=4, running=1).free == 3
    assert node(slots=2, running=5).free == 0


def test_each_recent_infrastructure_failure_halves_a_nodes_capacity_down_to_one() -> None:
    assert [node(slots=8, penalty=p).capacity for p in range(5)] == [8, 4, 2, 1, 1]


def test_an_offline_disabled_or_too_loaded_node_has_no_free_slot() -> None:
    for state in ({"online": False}, {"enabled": False}, {"accepting": False}):
        view = node(**state)
        assert not view.usable and view.free == 0


# ---- satisfies ---------------------------------------------------------------------------


def test_a_task_runs_where_its_requirements_and_platform_hold() -> None:
    wants = task(requires=["architecture is x86_64", "G4INSTALL in environ"], platform="linux")
    assert satisfies(wants, node(sys_info=LINUX))
    assert not satisfies(wants, node(sys_info=MAC))
    assert satisfies(task(platform="osx"), node(sys_info=MAC))


# ---- pick ----------------------------------------------------------------------------------


def test_pick_gives_the_first_held_task_the_node_can_run() -> None:
    held = [task("mac", platform="osx"), task("any1"), task("any2")]
    assert pick(held, node(sys_info=LINUX)) == 1
    assert pick(held, node(sys_info=MAC)) == 0


def test_pick_gives_none_when_the_node_can_run_no_held_task() -> None:
    assert pick([task(platform="osx")], node(sys_info=LINUX)) is None
    assert pick([], node()) is None


# ---- to_reserve ----------------------------------------------------------------------------


def test_to_reserve_takes_at_most_count_tasks_in_the_given_order() -> None:
    tasks = [task(f"t{i}") for i in range(5)]
    assert [t.id for t in to_reserve(tasks, [node()], 3)] == ["t0", "t1", "t2"]


def test_to_reserve_skips_tasks_no_usable_node_can_run() -> None:
    tasks = [task("mac", platform="osx"), task("linux", platform="linux"), task("any")]
    chosen = to_reserve(tasks, [node(sys_info=LINUX), node("m", sys_info=MAC, online=False)], 9)
    assert [t.id for t in chosen] == ["linux", "any"]


def test_to_reserve_counts_nodes_with_no_free_slot_as_usable() -> None:
    # Reservations run ahead of free slots (prefetch): a busy node still takes them.
    assert to_reserve([task()], [node(slots=1, running=1)], 1) == [task()]


def test_to_reserve_takes_nothing_without_a_usable_node() -> None:
    assert to_reserve([task()], [node(enabled=False), node("b", accepting=False)], 5) == []


# ---- fill_order ----------------------------------------------------------------------------


def test_fill_order_spreads_free_slots_round_robin() -> None:
    order = fill_order([node("a", slots=3), node("b", slots=1), node("c", slots=2)])
    assert [n.address for n in order] == ["a", "b", "c", "a", "c", "a"]


def test_fill_order_starts_at_the_cursor() -> None:
    nodes = [node("a", slots=1), node("b", slots=1), node("c", slots=1)]
    assert [n.address for n in fill_order(nodes, 1)] == ["b", "c", "a"]
    assert [n.address for n in fill_order(nodes, 5)] == ["c", "a", "b"]


def test_fill_order_leaves_out_busy_and_unusable_nodes() -> None:
    nodes = [node("busy", slots=1, running=1), node("off", online=False), node("ok", slots=1)]
    assert [n.address for n in fill_order(nodes)] == ["ok"]


def test_fill_order_of_no_nodes_is_empty() -> None:
    assert fill_order([]) == []


# ---- reservation order ---------------------------------------------------------------------


def test_reservation_order_is_highest_priority_then_oldest_then_id() -> None:
    tasks = [
        task("late", created=3),
        task("urgent", priority=5, created=9),
        task("b", created=1),
        task("a", created=1),
    ]
    assert [t.id for t in sorted(tasks, key=reservation_key)] == ["urgent", "a", "b", "late"]


# ---- waiting_reason ------------------------------------------------------------------------


def test_no_reason_when_only_a_free_slot_is_missing() -> None:
    assert waiting_reason(task(), [node(slots=1, running=1)]) is None


def test_reason_when_no_node_is_enabled() -> None:
    reason = waiting_reason(task(), [node(enabled=False)])
    assert reason == "no enabled node: add one with `dirt nodes add HOST`"
    assert waiting_reason(task(), []) == reason


def test_reason_names_the_missing_platform() -> None:
    reason = waiting_reason(task(platform="windows"), [node(), node("b", sys_info=MAC)])
    assert reason == "no node has platform windows; 2 nodes checked"


def test_reason_names_the_requirement_no_node_meets() -> None:
    reason = waiting_reason(task(requires=["architecture is sparc"]), [node()])
    assert reason == "no node has architecture sparc; 1 node checked"
    reason = waiting_reason(task(requires=["CUDA in environ"]), [node(), node("m", sys_info=MAC)])
    assert reason == "no node has CUDA in environ; 2 nodes checked"


def test_reason_when_requirements_hold_only_on_different_nodes() -> None:
    wants = task(requires=["architecture is arm64", "G4INSTALL in environ"])
    reason = waiting_reason(wants, [node(sys_info=LINUX), node("m", sys_info=MAC)])
    assert reason == (
        "no single node meets all of architecture is arm64, G4INSTALL in environ; 2 nodes checked"
    )


def test_reason_when_the_matching_nodes_are_offline() -> None:
    reason = waiting_reason(task(platform="osx"), [node(), node("m", sys_info=MAC, online=False)])
    assert reason == "the 1 matching node(s) are offline"


def test_reason_when_the_matching_online_nodes_are_too_loaded() -> None:
    nodes = [node(accepting=False), node("b", accepting=False), node("c", online=False)]
    assert waiting_reason(task(), nodes) == "the 3 matching node(s) are too loaded"


def test_a_disabled_node_is_not_counted_as_checked() -> None:
    reason = waiting_reason(task(platform="osx"), [node(), node("m", sys_info=MAC, enabled=False)])
    assert reason == "no node has platform osx; 1 node checked"
