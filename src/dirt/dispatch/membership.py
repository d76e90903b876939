"""This dispatcher among the others on one store: its lease, taking over dead dispatchers, and
its share of the nodes (claimed, kept, handed over).

The loop calls `beat` every second or so, and sooner when nodes or dispatchers changed. A beat
takes over every dead dispatcher it finds (see `Service.take_over_dead`), reads who drives what,
claims free nodes up to this dispatcher's share and hands over what is beyond it (see
`dispatch.balance`): a node to hand over takes no new task here and is released the moment
nothing of ours runs there. A draining dispatcher (stopping) hands over every node that way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dirt.dispatch.balance import plan
from dirt.dispatch.lease import Lease, Status
from dirt.models import Node
from dirt.service import Service
from dirt.service.masters import RUNNING

log = logging.getLogger("dirt")

BEAT_S = 1.0  # at most this long between two beats
SOON_S = 0.05  # at least this long between two beats (news of changed nodes brings one on)


@dataclass
class Share:
    """The nodes after a beat: those this dispatcher drives, of which those it is handing over,
    and every other node (for waiting reasons)."""

    driven: list[Node] = field(default_factory=list)
    handing: set[str] = field(default_factory=set)
    others: list[Node] = field(default_factory=list)
    peers: int = 1  # running dispatchers, this one among them


class Membership:
    def __init__(self, service: Service, status: Status, on_lost: Callable[[], None]) -> None:
        self.service = service
        self.lease = Lease(service, service.settings.dispatch.lease, status, on_lost)
        self.share = Share()
        self.draining = False
        self._last_beat = 0.0
        self._soon = True
        self._claims_since = 0.0  # when it last found no free node it should have

    # ---- when ----------------------------------------------------------------------------

    def nodes_changed(self) -> None:
        """Nodes or dispatchers changed in the store: beat soon."""
        self._soon = True

    def due(self) -> bool:
        elapsed = time.monotonic() - self._last_beat
        return elapsed >= min(BEAT_S, self.lease.interval) or (self._soon and elapsed >= SOON_S)

    # ---- what ----------------------------------------------------------------------------

    def start(self) -> None:
        """Register (ConfigError when refused), then take over at once what dead dispatchers
        of this machine left."""
        self.lease.register()
        recovered = self.service.recover_orphans()
        if recovered:
            log.info(
                "%d task(s) left running by an earlier dispatcher are waiting again", len(recovered)
            )

    def drain(self) -> None:
        """Hand over every node as it goes idle; claim nothing more."""
        self.draining = True
        self._soon = True
        self.lease.renew_now()  # the others see "draining" and count us out of the shares

    def beat(self, busy: Mapping[str, int]) -> Share:
        """Take over the dead, claim and hand over nodes; returns the share now. `busy` is the
        number of our tasks on each node (a node is handed over only once it is 0)."""
        self._last_beat = time.monotonic()
        self._soon = False
        me = self.service.master_id
        if not self.draining:
            self.service.take_over_dead(self.lease.settled())
        survey = self.service.survey()
        running = [d.id for d in survey.dispatchers if d.state == RUNNING and d.live]
        if self.draining:
            giving = {n.address for n in survey.nodes if n.driver == me}
        else:
            moves = plan(me, survey.nodes, running, busy, frozenset(self.share.handing))
            giving = set(moves.give_up)
            if moves.claim and self.lease.valid():
                got = set(self.service.claim_nodes(moves.claim, survey.clock))
                if got:
                    log.info("Now driving node(s) %s", ", ".join(sorted(got)))
                for node in survey.nodes:
                    if node.address in got:
                        node.driver = me
        idle = sorted(a for a in giving if not busy.get(a))
        released = set(self.service.release_nodes(idle)) if idle else set()
        if released:
            log.info(
                "Handed over node(s) %s%s",
                ", ".join(sorted(released)),
                " (stopping)" if self.draining else " (another dispatcher's share)",
            )
        driven = [n for n in survey.nodes if n.driver == me and n.address not in released]
        self.share = Share(
            driven=driven,
            handing=giving - released,
            others=[n for n in survey.nodes if n.driver != me or n.address in released],
            peers=len(set(running) | {me}),
        )
        return self.share
