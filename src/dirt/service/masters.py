"""Several masters on one store: each dispatcher's row and lease, taking over what a dead one
held, and the node leases that give every node exactly one driving dispatcher.

A dispatcher registers before it claims anything and deletes its row only after giving back
everything it held, so a claim (a reserved or running task, a node) whose master has no row is
always left over from a dead one. A dispatcher is dead when its lease ran out by the store's
clock, or at once when it ran on this machine (same boot, same pid namespace) and its process
is gone. Whoever deletes a dead dispatcher's row (a compare-and-set) takes over, in the same
transaction: its running tasks become lost attempts (back to waiting, or failed after
`max_attempts`), its reservations go back to every master, its nodes lose their driver.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection

from dirt.db import agents as agents_db
from dirt.db import dispatching as dispatching_db
from dirt.db import masters as masters_db
from dirt.db import nodes as nodes_db
from dirt.errors import ConfigError
from dirt.models import Dispatcher, Node
from dirt.service.base import EVERYTHING, NODES, log, machine_id
from dirt.service.dispatching import ORPHAN_REASON, Dispatching

DRAINING = "draining"
RUNNING = "running"

# The dispatchers registered by this process (tests and embedders run several in one).
_IN_THIS_PROCESS: set[str] = set()


@dataclass
class Survey:
    """What every dispatcher sees of the others: the store's clock, every dispatcher's row,
    every node with its driver, and the masters holding claims in force."""

    clock: float
    dispatchers: list[Dispatcher]
    nodes: list[Node]
    claim_owners: set[str] = field(default_factory=set)


@dataclass
class TakeOver:
    """What taking over a dead master did."""

    master: str
    why: str
    requeued: list[str]
    failed: list[str]
    released: int
    nodes: list[str]


class Masters(Dispatching):
    # ---- this dispatcher's row -----------------------------------------------------------------

    def register_dispatcher(self, lease: float) -> None:
        """Add this dispatcher's row, its lease running `lease` seconds.

        SQLite is refused (ConfigError) while a live dispatcher of another machine uses the
        same file: its locking and WAL work within one machine only.
        """
        machine = machine_id()

        def work(conn: Connection, seq: int) -> None:
            if self.engine.dialect.name == "sqlite":
                _, found = masters_db.list_dispatchers(conn)
                for other in found:
                    if other.live and not _same_boot(other, machine):
                        raise ConfigError(_sqlite_elsewhere(other, self.settings.database_url))
            masters_db.register(
                conn, self.master_id, socket.gethostname(), os.getpid(), machine, lease
            )

        self._write(work, wake=NODES)
        _IN_THIS_PROCESS.add(self.master_id)

    def renew_lease(self, lease: float, state: str) -> bool:
        """Extend this dispatcher's lease (and say whether it is running or draining); False
        when another master took over (its row is gone). Stamps nothing on the change sequence:
        a heartbeat is not a change."""
        return self._write(
            lambda conn, _seq: masters_db.renew(conn, self.master_id, lease, state),
            sequenced=False,
        )

    def unregister_dispatcher(self) -> None:
        """Delete this dispatcher's row once it gave back everything (its nodes too)."""

        def work(conn: Connection, seq: int) -> list[str]:
            released = masters_db.release_nodes(conn, self.master_id, seq)
            masters_db.unregister(conn, self.master_id)
            return released

        released = self._write(work, wake=NODES)
        _IN_THIS_PROCESS.discard(self.master_id)
        if released:
            log.info("Handed over node(s) %s (stopping)", ", ".join(released))

    # ---- what every dispatcher sees ------------------------------------------------------------

    def dispatchers(self) -> list[Dispatcher]:
        """Every dispatcher's row, oldest first (`live` False once its lease ran out)."""
        with self._read() as conn:
            return masters_db.list_dispatchers(conn)[1]

    def survey(self, with_claims: bool = False) -> Survey:
        with self._read() as conn:
            # Claims first: on PostgreSQL each statement sees the store as it is then, and a
            # master registers before it claims, so every claim read here has its row below
            # unless its master is gone.
            owners = set()
            if with_claims:
                owners = masters_db.claim_owners(conn) | masters_db.node_drivers(conn)
            clock, found = masters_db.list_dispatchers(conn)
            return Survey(clock, found, nodes_db.list_nodes(conn), owners)

    # ---- taking over ---------------------------------------------------------------------------

    def take_over_dead(self, settled: bool) -> list[TakeOver]:
        """Take over every dead dispatcher: gone from this machine, or (when `settled`: this
        dispatcher has held its own lease without a gap for a whole lease, so its view of the
        store's clock is current) whose lease ran out. With `settled`, claims of masters with
        no row are taken over too. Returns what was taken over."""
        survey = self.survey(with_claims=True)
        taken = []
        for dead, why, expired in self._dead(survey, settled):
            done = self._take_over(dead.id, why, dead.lease_until, expired)
            if done is not None:
                taken.append(done)
        rows = {d.id for d in survey.dispatchers} | {self.master_id}
        for owner in sorted(survey.claim_owners - rows):
            if owner.startswith(agents_db.CLAIM_PREFIX):
                continue  # a pull-mode agent's claim: its own lease decides (service.agents)
            gone = _rowless_gone(owner)
            if gone is None and settled:
                gone = "it holds claims but has no lease (it was taken over, or predates leases)"
            if gone is not None:
                done = self._take_over(owner, gone, None, False)
                if done is not None and (done.requeued or done.released or done.nodes):
                    taken.append(done)
        return taken

    def _dead(self, survey: Survey, settled: bool) -> list[tuple[Dispatcher, str, bool]]:
        """(dispatcher, why it is dead, whether by its lease) for each dead one."""
        here = machine_id()
        found = []
        for other in survey.dispatchers:
            if other.id == self.master_id:
                continue
            if here is not None and other.machine == here and _gone(other.pid, other.id):
                found.append((other, f"its process (pid {other.pid}) is gone", False))
            elif settled and other.lease_until < survey.clock:
                ago = survey.clock - other.lease_until
                found.append((other, f"its lease ran out {ago:.1f} s ago", True))
        return found

    def take_over(self, master: str, why: str) -> TakeOver | None:
        """Take over whatever claims `master` (found dead, or this dispatcher's former id)
        still holds, whatever its lease says."""
        return self._take_over(master, why, None, False)

    def _take_over(
        self, master: str, why: str, lease_until: float | None, expired: bool
    ) -> TakeOver | None:
        reason = f"{ORPHAN_REASON}: {master} died, {why}"

        def work(conn: Connection, seq: int) -> TakeOver | None:
            if lease_until is not None and not masters_db.forget(
                conn, master, lease_until, expired
            ):
                return None  # it renewed meanwhile, or another master took over first
            running = masters_db.running_claims(conn, master)
            requeued, failed = self._requeue(conn, seq, running, reason, True, master)
            released = dispatching_db.release_reservations(conn, seq, master)
            freed = masters_db.release_nodes(conn, master, seq)
            return TakeOver(master, why, requeued, failed, released, freed)

        done = self._write(work, wake=EVERYTHING)
        if done is not None:
            log.warning(
                "Dispatcher %s is dead (%s): took over %d running task(s) (%d back to waiting, "
                "%d failed, out of attempts), %d reservation(s), node(s) %s",
                master,
                why,
                len(done.requeued) + len(done.failed),
                len(done.requeued),
                len(done.failed),
                done.released,
                ", ".join(done.nodes) or "none",
            )
        return done

    def recover_orphans(self) -> list[str]:
        """Tasks a dead dispatcher on this machine left running go back to waiting, and what
        it had reserved goes back to every dispatcher, without waiting for its lease to run out.
        Returns the ids of the tasks requeued."""
        return [t for done in self.take_over_dead(settled=False) for t in done.requeued]

    # ---- node leases ---------------------------------------------------------------------------

    def claim_nodes(self, addresses: Sequence[str], since: float) -> list[str]:
        """Drive those of `addresses` no dispatcher drives; returns those claimed."""
        if not addresses:
            return []
        return self._write(
            lambda conn, seq: masters_db.claim_nodes(conn, addresses, self.master_id, seq, since),
            wake=NODES,
        )

    def release_nodes(self, addresses: Sequence[str]) -> list[str]:
        """Stop driving `addresses` (idle now): any dispatcher may claim them."""
        if not addresses:
            return []
        return self._write(
            lambda conn, seq: masters_db.release_nodes(conn, self.master_id, seq, addresses),
            wake=NODES,
        )


def _same_boot(other: Dispatcher, machine: str | None) -> bool:
    """True when `other` runs on this machine (any pid namespace: a SQLite file works there)."""
    if other.machine and machine:
        return other.machine.split("/")[0] == machine.split("/")[0]
    return other.host == socket.gethostname()


def _sqlite_elsewhere(other: Dispatcher, url: str) -> str:
    return (
        f"the SQLite store {url} is in use by dispatcher {other.id} on host {other.host}, "
        "another machine: SQLite works for several masters on one machine only (its locks and "
        "write-ahead log need one kernel). Put masters on several machines on PostgreSQL: set "
        '[project] database_url = "postgresql://USER@HOST/DB" in dirt.toml'
    )


def _gone(pid: int, owner: str) -> bool:
    """True when `pid` on this machine is not the live dispatcher `owner`."""
    if pid == os.getpid():
        # This process, which may run several dispatchers, or had an earlier one of this pid
        # (a container's pid 1, restarted).
        return owner not in _IN_THIS_PROCESS
    return not pid_alive(pid)


def _rowless_gone(owner: str) -> str | None:
    """Why a master with claims but no row is dead, when its id (host:pid:token) proves it: a
    dispatcher of this host whose pid is gone. None when that cannot be told."""
    owner_host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if owner_host != socket.gethostname()[:40] or not pid.isdigit():
        return None
    if _gone(int(pid), owner):
        return f"its process (pid {pid}) is gone"
    return None


def pid_alive(pid: int) -> bool:
    """True while a process `pid` runs on this machine (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
