"""Token scopes and the audit in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from dirt.config import Settings
from dirt.db.engine import make_engine, write_transaction
from dirt.db.migrate import alembic_config
from dirt.db.tokens import digest
from dirt.errors import SubmissionError
from dirt.models import TokenScope
from dirt.service import Service

# The revision this one follows, whatever it is when the migrations are chained.
BEFORE = ScriptDirectory.from_config(alembic_config()).get_revision("0300_security").down_revision


def test_tokens_made_before_scopes_keep_writing(store_settings: Settings) -> None:
    """A store made before revision 0300_security: its tokens get scope api, as they could
    write."""
    engine: Engine = make_engine(store_settings.database_url)
    try:
        config = alembic_config()
        with write_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, BEFORE)
            conn.execute(
                text(
                    "INSERT INTO api_tokens (name, token_sha256, created) "
                    f"VALUES ('old', '{digest('dirt_old')}', 1.0)"
                )
            )
        service = Service(store_settings, engine=engine)
        found = service.find_token("dirt_old")
        assert found is not None and (found.name, found.scope) == ("old", TokenScope.API)
        assert service.audit() == []
    finally:
        engine.dispose()


def test_an_audit_row_commits_with_its_change_or_not_at_all(store: Service) -> None:
    store.submit_tasks("r1", ["examples.simple"])
    assert [(e.action, e.target) for e in store.audit()] == [("submit", "r1: 1 task(s)")]
    with pytest.raises(SubmissionError):
        store.submit_tasks("r2", ["no.such.task"])
    assert len(store.audit()) == 1
    store.create_token("reader", TokenScope.READ)
    store.revoke_token("reader")
    assert [e.action for e in store.audit()][-2:] == ["token create", "token revoke"]
    assert all(e.seq > 0 and e.at > 0 for e in store.audit())
