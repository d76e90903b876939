"""Schema versions through Alembic, applied automatically when a store is opened.

Opening a store that is up to date needs no Alembic: the newest revision is read from the
migration files' ``revision``/``down_revision`` lines and the store's from its version table,
in plain SQL. Alembic (with mako and pygments, about 0.3 s of every command's start-up) is
loaded only to upgrade.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

from dirt.db.engine import write_transaction

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@cache
def head_revision() -> str:
    """The newest revision: the one no other revision names as its `down_revision`."""
    revisions: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        found = dict(_REVISION.findall(path.read_text(encoding="utf-8")))
        revision, down = _literal(found.get("revision")), _literal(found.get("down_revision"))
        if revision is None:
            return _alembic_head()  # a form this reading does not know: ask Alembic
        revisions[revision] = down
    heads = set(revisions) - set(revisions.values())
    return heads.pop() if len(heads) == 1 else _alembic_head()


def _literal(value: str | None) -> str | None:
    if value is None or value == "None":
        return None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return None


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    """The store's revision (None for a new store), as Alembic keeps it."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest version; cheap when it already is."""
    if current_revision(engine) == head_revision():
        return
    from alembic import command

    # The write transaction serialises two processes that open a new store at once.
    with write_transaction(engine) as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
