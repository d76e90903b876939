"""CLI fixtures: a project as `dirt create` makes it, and `dirt serve` as a process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dirt.project import create_project
from tests.conftest import DIRT


@pytest.fixture
def cli_project(tmp_path: Path) -> Path:
    """A project as `dirt create proj` makes it (create_project, the function that command
    calls: test_create_makes_a_project runs the command itself), polling every 0.02 s.
    In-process, as each `dirt` process costs 0.7-0.8 s to start on the CI machines."""
    project = create_project(tmp_path / "proj")
    toml = project / "dirt.toml"
    toml.write_text(toml.read_text().replace("poll_interval = 0.05", "poll_interval = 0.02"))
    return project


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
