"""Real git repositories: a bare one with a clone, commits made with the git CLI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import have, need


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment with no user git config, a fixed author and committer."""
    need(have("git"), "git")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Ada Lovelace",
        "GIT_AUTHOR_EMAIL": "ada@example.org",
        "GIT_COMMITTER_NAME": "Ada Lovelace",
        "GIT_COMMITTER_EMAIL": "ada@example.org",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env}


def run_git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def checkout(tmp_path: Path, git_env: dict[str, str]) -> Path:
    """A new checkout on branch main with no commits."""
    path = tmp_path / "work"
    run_git(tmp_path, "init", "-q", "-b", "main", str(path))
    return path


@pytest.fixture
def commit(checkout: Path) -> Callable[..., str]:
    """Commit a change with `subject` in the checkout (or `where`); returns the full sha."""
    counter = iter(range(1_000_000))

    def make(subject: str, where: Path | None = None) -> str:
        path = where or checkout
        (path / f"file{next(counter)}.txt").write_text(subject, encoding="utf-8")
        run_git(path, "add", "-A")
        run_git(path, "commit", "-q", "-m", subject)
        return run_git(path, "rev-parse", "HEAD").strip()

    return make


@pytest.fixture
def bare(tmp_path: Path, checkout: Path) -> Path:
    """A bare repository the checkout pushes to as `origin`."""
    path = tmp_path / "repo.git"
    run_git(tmp_path, "init", "-q", "--bare", "-b", "main", str(path))
    run_git(checkout, "remote", "add", "origin", str(path))
    return path
