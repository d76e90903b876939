"""Fair order between records, and dispatchers that announce themselves.

- `tasks.turn`: the round in which the task's record takes it under fair order;
  `tasks.record_created`: its record's `created`, which orders records within a round. The
  partial index `ix_tasks_fair` holds waiting tasks only, in the fair order (priority highest
  first, turn, record_created, record_id, created, id), so the dispatcher's read of the next
  waiting tasks is a keyset scan whatever the queue's length.
- `record_turns`: per record and priority, the next slot of its turn sequence.
- `dispatcher_views`: a row per dispatcher: heartbeat, order, and its view of the nodes it drives.

Existing waiting tasks are numbered per record and priority, oldest first, from round 0: every
record with waiting tasks starts level with the others.

Revision ID: 0500_fair
Revises: 0100_couch
"""

from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0500_fair"
down_revision = "0200_ci"
branch_labels = None
depends_on = None

WAITING_ONLY = sa.text("state = 'waiting'")
MAX_SHARE = 1000


def _share(extra: object) -> int:
    value = extra.get("share", 1) if isinstance(extra, dict) else 1
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SHARE:
        return value
    return 1


def _number_waiting_tasks() -> None:
    conn = op.get_bind()
    records = sa.table("records", sa.column("id"), sa.column("extra", sa.JSON))
    tasks = sa.table(
        "tasks",
        sa.column("id"),
        sa.column("record_id"),
        sa.column("priority"),
        sa.column("created"),
        sa.column("state"),
        sa.column("turn"),
    )
    waiting = conn.execute(
        sa.select(tasks.c.id, tasks.c.record_id, tasks.c.priority)
        .where(tasks.c.state == "waiting")
        .order_by(tasks.c.record_id, tasks.c.priority, tasks.c.created, tasks.c.id)
    ).all()
    if not waiting:
        return
    ids = sorted({row.record_id for row in waiting})
    shares = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for rid, extra in conn.execute(
            sa.select(records.c.id, records.c.extra).where(records.c.id.in_(chunk))
        ):
            shares[rid] = _share(extra)
    slots: dict[tuple[str, int], int] = defaultdict(int)
    updates = []
    for row in waiting:
        key = (row.record_id, row.priority)
        updates.append({"b_id": row.id, "b_turn": slots[key] // shares.get(row.record_id, 1)})
        slots[key] += 1
    statement = sa.update(tasks).where(tasks.c.id == sa.bindparam("b_id"))
    for start in range(0, len(updates), 10_000):
        conn.execute(statement.values(turn=sa.bindparam("b_turn")), updates[start : start + 10_000])
    op.bulk_insert(
        sa.table(
            "record_turns", sa.column("record_id"), sa.column("priority"), sa.column("next_slot")
        ),
        [{"record_id": r, "priority": p, "next_slot": n} for (r, p), n in slots.items()],
    )


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild), so the triggers on `tasks` stay as they are.
    op.add_column(
        "tasks", sa.Column("turn", sa.BigInteger, nullable=False, server_default=sa.text("0"))
    )
    op.add_column(
        "tasks",
        sa.Column("record_created", sa.Float, nullable=False, server_default=sa.text("0")),
    )
    op.execute(
        "UPDATE tasks SET record_created = "
        "(SELECT records.created FROM records WHERE records.id = tasks.record_id)"
    )
    op.create_table(
        "record_turns",
        sa.Column("record_id", sa.String(200), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("next_slot", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("record_id", "priority", name="pk_record_turns"),
    )
    op.create_table(
        "dispatcher_views",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("stopped", sa.Float, nullable=True),
        sa.Column("dispatch_order", sa.String(16), nullable=False),
        sa.Column("view", sa.JSON, nullable=False),
    )
    _number_waiting_tasks()
    op.create_index(
        "ix_tasks_fair",
        "tasks",
        [
            sa.text("priority DESC"),
            "turn",
            "record_created",
            "record_id",
            "created",
            "id",
        ],
        sqlite_where=WAITING_ONLY,
        postgresql_where=WAITING_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_fair", table_name="tasks")
    op.drop_table("dispatcher_views")
    op.drop_table("record_turns")
    op.drop_column("tasks", "record_created")
    op.drop_column("tasks", "turn")
