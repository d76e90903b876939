"""Dispatchers and their leases: the row of each running master, the node leases (which master
drives a node), and the claims a dead master left.

Lease times are the store's clock (`store_clock`), never a master's own: masters on machines
whose clocks disagree by seconds still agree on whose lease ran out. Every change that decides
something between masters is conditional on what the caller saw (a compare-and-set), so two
masters that act on the same news at once cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Float, delete, func, insert, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from dirt.db.schema import ACTIVE_CLAIM, dispatchers, nodes, tasks, through_claims
from dirt.models import Dispatcher, TaskState


class store_clock(FunctionElement[float]):
    """The store's clock, in epoch seconds (a float)."""

    type = Float()
    inherit_cache = True
    name = "store_clock"


@compiles(store_clock, "postgresql")
def _clock_postgresql(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(store_clock, "sqlite")
def _clock_sqlite(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


def now(conn: Connection) -> float:
    """The store's clock now."""
    return float(conn.execute(select(store_clock())).scalar_one())


# ---- the dispatchers' rows -----------------------------------------------------------------


def register(
    conn: Connection, master: str, host: str, pid: int, machine: str | None, lease: float
) -> float:
    """Add the row of a starting dispatcher, its lease running `lease` seconds; returns when
    it started (the store's clock)."""
    started = now(conn)
    conn.execute(
        insert(dispatchers).values(
            id=master,
            host=host,
            pid=pid,
            machine=machine,
            started=started,
            heartbeat=started,
            lease_until=started + lease,
            state="running",
        )
    )
    return started


def renew(conn: Connection, master: str, lease: float, state: str) -> bool:
    """Extend `master`'s lease by `lease` seconds from now; False when its row is gone (another
    master took over what it held)."""
    clock = store_clock()
    result = conn.execute(
        update(dispatchers)
        .where(dispatchers.c.id == master)
        .values(heartbeat=clock, lease_until=clock + lease, state=state)
    )
    return result.rowcount == 1


def unregister(conn: Connection, master: str) -> bool:
    return conn.execute(delete(dispatchers).where(dispatchers.c.id == master)).rowcount == 1


def forget(conn: Connection, master: str, lease_until: float, expired: bool) -> bool:
    """Delete the row of a dispatcher found dead, if it is as the caller saw it (it did not
    renew meanwhile) and, with `expired`, if its lease ran out by the store's clock. True when
    this call deleted it: the caller, and no one else, takes over what it held."""
    query = delete(dispatchers).where(
        dispatchers.c.id == master, dispatchers.c.lease_until == lease_until
    )
    if expired:
        query = query.where(dispatchers.c.lease_until < store_clock())
    return conn.execute(query).rowcount == 1


def list_dispatchers(conn: Connection) -> tuple[float, list[Dispatcher]]:
    """The store's clock and every dispatcher's row, oldest first, with the nodes it drives and
    the tasks it runs."""
    clock = now(conn)
    driven: dict[str, list[str]] = {}
    query = select(nodes.c.driver, nodes.c.address).where(nodes.c.driver.is_not(None))
    for driver, address in conn.execute(query.order_by(nodes.c.address)):
        driven.setdefault(driver, []).append(address)
    running: dict[str, int] = dict(
        conn.execute(
            select(tasks.c.claimed_by, func.count())
            .where(ACTIVE_CLAIM, tasks.c.state == TaskState.RUNNING.value)
            .group_by(tasks.c.claimed_by)
        ).all()
    )
    found = [
        Dispatcher(
            id=row.id,
            host=row.host,
            pid=row.pid,
            machine=row.machine,
            started=row.started,
            heartbeat=row.heartbeat,
            lease_until=row.lease_until,
            state=row.state,
            running=running.get(row.id, 0),
            nodes=driven.get(row.id, []),
            live=row.lease_until >= clock,
        )
        for row in conn.execute(
            select(dispatchers).order_by(dispatchers.c.started, dispatchers.c.id)
        )
    ]
    return clock, found


# ---- claims --------------------------------------------------------------------------------


# Read at every beat of every master: through the index of claims, never the waiting tasks.
CLAIM_OWNERS = through_claims(select(tasks.c.claimed_by).where(ACTIVE_CLAIM).distinct())


def claim_owners(conn: Connection) -> set[str]:
    """Every master holding a claim in force (a reserved or running task)."""
    return set(conn.execute(CLAIM_OWNERS).scalars())


def running_claims(conn: Connection, master: str) -> list[tuple[str, int]]:
    """(task id, attempt) of the tasks `master` runs."""
    query = select(tasks.c.id, tasks.c.attempts).where(
        ACTIVE_CLAIM,
        tasks.c.claimed_by == master,
        tasks.c.state == TaskState.RUNNING.value,
    )
    return [(row[0], row[1]) for row in conn.execute(query)]


# ---- node leases ---------------------------------------------------------------------------


def claim_nodes(
    conn: Connection, addresses: Sequence[str], master: str, seq: int, since: float
) -> list[str]:
    """Make `master` the driver of those of `addresses` no one drives; returns those it got.
    Nothing while `master` has no row: one taken over that has not noticed yet gets no node."""
    registered = select(dispatchers.c.id).where(dispatchers.c.id == master).exists()
    got = []
    for address in addresses:
        result = conn.execute(
            update(nodes)
            .where(nodes.c.address == address, nodes.c.driver.is_(None), registered)
            .values(driver=master, driver_since=since, seq=seq)
        )
        if result.rowcount == 1:
            got.append(address)
    return got


def release_nodes(
    conn: Connection, master: str, seq: int, addresses: Sequence[str] | None = None
) -> list[str]:
    """Give up `master`'s lease on the nodes named (all of its nodes when None); returns the
    addresses released."""
    query = select(nodes.c.address).where(nodes.c.driver == master)
    if addresses is not None:
        query = query.where(nodes.c.address.in_(list(addresses)))
    released = list(conn.execute(query).scalars())
    if released:
        conn.execute(
            update(nodes)
            .where(nodes.c.driver == master, nodes.c.address.in_(released))
            .values(driver=None, driver_since=None, seq=seq)
        )
    return released


def node_drivers(conn: Connection) -> set[str]:
    """Every master named as a node's driver."""
    query = select(nodes.c.driver).where(nodes.c.driver.is_not(None)).distinct()
    return set(conn.execute(query).scalars())
