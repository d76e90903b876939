"""The source stays in small modules, one job each."""

from __future__ import annotations

from pathlib import Path

import dirt

SRC = Path(dirt.__file__).parent
MOST_LINES = 500


def test_no_module_of_dirt_is_over_500_lines() -> None:
    sizes = {
        str(path.relative_to(SRC)): len(path.read_text(encoding="utf-8").splitlines())
        for path in SRC.rglob("*.py")
        if "migrations" not in path.parts
    }
    assert {name: n for name, n in sizes.items() if n > MOST_LINES} == {}
