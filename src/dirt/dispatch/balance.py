"""Which nodes each dispatcher drives: pure functions, no I/O.

Every live dispatcher computes the same shares from the same store: the enabled nodes divided
evenly over the running dispatchers, the odd ones to those that hold the most already (then by
id), so a share moves only when a dispatcher starts, stops or dies, never back and forth. A
dispatcher below its share claims free nodes (a compare-and-set in the store: two cannot both
get one); one above it hands nodes over, idle ones first, a busy one only once drained (it takes
no new tasks there and lets the running ones finish), so no task is killed by a rebalance.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dirt.models import Node


@dataclass
class Plan:
    """One dispatcher's share and the moves that bring it there."""

    target: int
    claim: list[str] = field(default_factory=list)  # free nodes to claim now
    give_up: list[str] = field(default_factory=list)  # driven nodes to hand over (once idle)


def shares(held: Mapping[str, int], nodes: int) -> dict[str, int]:
    """How many nodes each dispatcher drives: `nodes` spread evenly over `held`'s keys, the
    remainder to those holding the most now (then by id), so that no node moves needlessly."""
    order = sorted(held, key=lambda master: (-held[master], master))
    if not order:
        return {}
    base, extra = divmod(nodes, len(order))
    return {master: base + (1 if i < extra else 0) for i, master in enumerate(order)}


def plan(
    me: str,
    nodes: Sequence[Node],
    running: Sequence[str],
    busy: Mapping[str, int],
    handing: frozenset[str] = frozenset(),
) -> Plan:
    """The moves of dispatcher `me` among `nodes` (each with its driver), given the running
    dispatchers (`running`, `me` among them), the tasks `me` runs per node (`busy`) and the
    nodes it is handing over already (kept first among those to give up)."""
    enabled = [n for n in nodes if n.enabled]
    held = dict.fromkeys(running, 0)
    held[me] = held.get(me, 0)
    for node in enabled:
        if node.driver in held:
            held[node.driver] += 1
    target = shares(held, len(enabled))[me]
    mine = [n.address for n in enabled if n.driver == me]
    result = Plan(target)
    if len(mine) > target:
        # Nodes already being handed over first, then the idlest.
        order = sorted(mine, key=lambda a: (a not in handing, busy.get(a, 0), a))
        result.give_up = order[: len(mine) - target]
    elif len(mine) < target:
        free = sorted(n.address for n in enabled if n.driver is None)
        if free:
            # Each dispatcher tries the free nodes from its own point, so two that claim at
            # once mostly ask for different nodes.
            start = zlib.crc32(me.encode()) % len(free)
            result.claim = (free[start:] + free[:start])[: target - len(mine)]
    # A disabled node needs no driver once nothing runs there.
    result.give_up += [n.address for n in nodes if not n.enabled and n.driver == me]
    return result
