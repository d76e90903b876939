"""`dirt token create --scope`, `dirt token list` and `dirt audit` as real commands."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from tests.conftest import run_dirt


def test_read_tokens_are_made_and_listed_with_their_scope(cli_project: Path) -> None:
    made = run_dirt("token", "create", "dashboard", "--scope", "read", cwd=cli_project)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("dirt_") and "scope read" in made.stderr
    assert run_dirt("token", "create", "ci", cwd=cli_project).returncode == 0
    listed = run_dirt("token", "list", cwd=cli_project).stdout
    assert "ci  scope api" in listed and "dashboard  scope read" in listed
    bad = run_dirt("token", "create", "x", "--scope", "root", cwd=cli_project)
    assert bad.returncode == 2 and "'root' is not one of" in bad.stderr


def test_audit_lists_who_changed_what(cli_project: Path) -> None:
    assert run_dirt("submit", "r1", "-t", "examples.simple", cwd=cli_project).returncode == 0
    assert run_dirt("token", "create", "ci", cwd=cli_project).returncode == 0
    shown = run_dirt("audit", cwd=cli_project)
    assert shown.returncode == 0, shown.stderr
    assert "submit" in shown.stdout and "r1: 1 task(s)" in shown.stdout
    entries = json.loads(run_dirt("audit", "--json", "--since", "1h", cwd=cli_project).stdout)
    assert [(e["actor"], e["via"], e["action"]) for e in entries] == [
        (getpass.getuser(), "local", "submit"),
        (getpass.getuser(), "local", "token create"),
    ]
    assert (
        json.loads(run_dirt("audit", "--json", "--limit", "1", cwd=cli_project).stdout)[0]["action"]
        == "token create"
    )
    future = run_dirt("audit", "--since", "2999-01-01", cwd=cli_project)
    assert future.returncode == 0 and "no writes recorded since then" in future.stdout


def test_audit_since_must_be_a_time(cli_project: Path) -> None:
    bad = run_dirt("audit", "--since", "yesterday-ish", cwd=cli_project)
    assert bad.returncode == 2
    assert "30m, 2h, 7d, 1w" in bad.stderr
