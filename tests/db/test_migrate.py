"""Opening a store: its schema version read without Alembic, which loads only to upgrade."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from dirt.db import migrate
from dirt.db.engine import make_engine


def test_the_newest_revision_read_from_the_files_is_alembics_head() -> None:
    alembic_head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert migrate.head_revision() == alembic_head


def test_a_new_store_has_no_revision_and_an_upgraded_one_has_the_newest(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.sqlite'}")
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_opening_an_up_to_date_store_loads_no_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    migrate.upgrade(make_engine(url))
    program = (
        "import sys; from dirt.db import migrate; from dirt.db.engine import make_engine; "
        f"migrate.upgrade(make_engine({url!r})); print('alembic' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
