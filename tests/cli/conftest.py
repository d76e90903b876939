"""CLI fixtures: a project made by the real `dirt create`, and `dirt serve` as a process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DIRT, run_dirt


@pytest.fixture
def cli_project(tmp_path: Path) -> Path:
    result = run_dirt("create", "proj", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (tmp_path / "proj" / "dirt.toml").write_text(
        (tmp_path / "proj" / "dirt.toml")
        .read_text()
        .replace("poll_interval = 0.05", "poll_interval = 0.02")
    )
    return tmp_path / "proj"


def serve(cli_project: Path, **settings: str) -> subprocess.Popen:
    """`dirt serve --no-web` in the project; `settings` are DIRT_* variables for it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")} | settings
    return subprocess.Popen(
        [DIRT, "serve", "--no-web"],
        cwd=cli_project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
