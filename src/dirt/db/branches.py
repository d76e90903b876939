"""The outcome of the last finished record per branch: what `[notify.email] when` compares to."""

from __future__ import annotations

from sqlalchemy import Connection, select, update
from sqlalchemy import insert as sql_insert

from dirt.db.ci_schema import branch_outcomes


def previous_outcome(conn: Connection, repository: str, ref: str) -> str | None:
    """The outcome of the last record of this branch that finished, or None."""
    query = select(branch_outcomes.c.outcome).where(
        branch_outcomes.c.repository == repository, branch_outcomes.c.ref == ref
    )
    return conn.execute(query).scalar_one_or_none()


def set_outcome(
    conn: Connection, repository: str, ref: str, record_id: str, outcome: str, now: float
) -> None:
    """Remember `outcome` as the branch's latest (read `previous_outcome` first)."""
    values = {"record_id": record_id, "outcome": outcome, "finished": now}
    changed = conn.execute(
        update(branch_outcomes)
        .where(branch_outcomes.c.repository == repository, branch_outcomes.c.ref == ref)
        .values(**values)
    ).rowcount
    if not changed:
        conn.execute(sql_insert(branch_outcomes).values(repository=repository, ref=ref, **values))
