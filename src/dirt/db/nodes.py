"""Nodes: the execution hosts, their sys_info, slots and health."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from dirt.db.schema import nodes
from dirt.models import Node, NodeKind


def node_from_row(row: Any) -> Node:
    return Node(
        address=row.address,
        enabled=bool(row.enabled),
        online=bool(row.online),
        slots=row.slots,
        slots_override=row.slots_override,
        sys_info=row.sys_info or {},
        added=row.added,
        last_seen=row.last_seen,
        last_error=row.last_error,
        load=row.load,
        infra_failures=row.infra_failures,
        ssh=row.ssh or {},
        seq=row.seq,
        driver=row.driver,
        driver_since=row.driver_since,
        kind=NodeKind(row.kind),
        penalty=row.penalty,
    )


def get_node(conn: Connection, address: str) -> Node | None:
    row = conn.execute(select(nodes).where(nodes.c.address == address)).first()
    return node_from_row(row) if row else None


def list_nodes(conn: Connection) -> list[Node]:
    return [node_from_row(row) for row in conn.execute(select(nodes).order_by(nodes.c.address))]


def upsert_node(conn: Connection, node: Node, seq: int) -> None:
    """Add a node, or refresh a known one's sys_info and slots (keeping `enabled`)."""
    values = {
        "kind": node.kind.value,
        "online": node.online,
        "slots": node.slots,
        "slots_override": node.slots_override,
        "sys_info": node.sys_info,
        "last_seen": node.last_seen,
        "last_error": node.last_error,
        "load": node.load,
        "ssh": node.ssh or None,
        "seq": seq,
    }
    result = conn.execute(update(nodes).where(nodes.c.address == node.address).values(**values))
    if result.rowcount == 0:
        conn.execute(
            insert(nodes).values(
                address=node.address,
                enabled=node.enabled,
                added=node.added,
                infra_failures=0,
                **values,
            )
        )


def update_node(
    conn: Connection, address: str, seq: int, *, infra_failure: bool = False, **values: Any
) -> bool:
    """Set columns of one node; `infra_failure` counts one more task lost to the node itself.
    False when there is no such node."""
    if infra_failure:
        values["infra_failures"] = nodes.c.infra_failures + 1
    result = conn.execute(update(nodes).where(nodes.c.address == address).values(seq=seq, **values))
    return result.rowcount == 1


def delete_node(conn: Connection, address: str) -> bool:
    return conn.execute(delete(nodes).where(nodes.c.address == address)).rowcount == 1
