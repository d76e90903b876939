"""Which nodes each dispatcher drives: shares, claims and handovers (pure, no store)."""

from __future__ import annotations

from dirt.dispatch.balance import plan, shares
from dirt.models import Node


def nodes(*drivers: str | None, enabled: bool = True) -> list[Node]:
    return [Node(f"n{i}", enabled=enabled, driver=d) for i, d in enumerate(drivers)]


def test_nodes_are_shared_evenly_and_the_odd_ones_go_to_those_holding_most() -> None:
    assert shares({"a": 0, "b": 0, "c": 0}, 6) == {"a": 2, "b": 2, "c": 2}
    assert shares({"a": 1, "b": 3, "c": 0}, 4) == {"b": 2, "a": 1, "c": 1}
    assert shares({"a": 0, "b": 0}, 3) == {"a": 2, "b": 1}


def test_a_lone_dispatcher_claims_every_free_enabled_node() -> None:
    moves = plan("a", nodes(None, None, None), ["a"], {})
    assert (moves.target, sorted(moves.claim), moves.give_up) == (3, ["n0", "n1", "n2"], [])


def test_a_dispatcher_claims_only_up_to_its_share() -> None:
    moves = plan("b", nodes("a", "a", None, None), ["a", "b"], {})
    assert moves.target == 2 and len(moves.claim) == 2
    moves = plan("b", nodes("a", "a", "a", None), ["a", "b"], {})
    assert moves.target == 2 and len(moves.claim) == 1


def test_a_new_dispatcher_gets_nodes_from_the_one_holding_too_many() -> None:
    four = nodes("a", "a", "a", "a")
    assert plan("a", four, ["a", "b"], {}).give_up == ["n0", "n1"]
    assert plan("b", four, ["a", "b"], {}).target == 2


def test_idle_nodes_are_handed_over_first() -> None:
    moves = plan("a", nodes("a", "a", "a", "a"), ["a", "b"], {"n0": 2, "n1": 1, "n3": 1})
    assert moves.give_up == ["n2", "n1"]


def test_a_node_being_handed_over_stays_the_one_handed_over() -> None:
    moves = plan("a", nodes("a", "a", "a", "a"), ["a", "b"], {"n0": 2}, frozenset({"n0"}))
    assert moves.give_up[0] == "n0"


def test_shares_do_not_move_when_they_are_even() -> None:
    spread = nodes("a", "b", "c", "a")
    for me in "abc":
        moves = plan(me, spread, ["a", "b", "c"], {})
        assert (moves.claim, moves.give_up) == ([], [])


def test_a_dispatcher_gives_up_a_disabled_node_and_claims_none() -> None:
    moves = plan("a", nodes("a", None, enabled=False), ["a"], {})
    assert (moves.target, moves.claim, moves.give_up) == (0, [], ["n0"])


def test_nodes_of_a_dispatcher_not_running_count_for_the_others() -> None:
    # "b" is draining (not among the running): its nodes go to "a" as b hands them over.
    moves = plan("a", nodes("b", "b", None), ["a"], {})
    assert moves.target == 3 and moves.claim == ["n2"]
