"""A bad option value is a usage error that names the option, not a rejected submission."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_dirt


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("usage")
    assert run_dirt("create", "proj", cwd=where).returncode == 0
    return where / "proj"


def test_kwargs_that_are_not_json_name_the_option(project: Path) -> None:
    result = run_dirt("submit", "r1", "-t", "examples.simple", "--kwargs", "{cat: 1", cwd=project)
    assert result.returncode == 2
    assert "Invalid value for '--kwargs': not valid JSON" in result.stderr
    assert "submission rejected" not in result.stderr


def test_task_options_without_a_task_are_a_usage_error(project: Path) -> None:
    result = run_dirt("submit", "r1", "-d", "one", cwd=project)
    assert result.returncode == 2
    assert "-d, --kwargs, --requires, --platform and --timeout go with -t NAME" in result.stderr
    assert "submission rejected" not in result.stderr


def test_a_missing_file_says_how_to_add_tasks_instead(project: Path) -> None:
    result = run_dirt("submit", "r1", cwd=project)
    assert result.returncode == 2
    assert "Invalid value for 'TARGET': r1: no such file" in result.stderr
    assert "give -t NAME" in result.stderr


def test_nothing_was_stored_by_any_of_them(project: Path) -> None:
    for args in (("-t", "examples.simple", "--kwargs", "[1,"), ("-d", "x"), ()):
        run_dirt("submit", "r1", *args, cwd=project)
    assert run_dirt("status", "--json", cwd=project).stdout.strip() == "[]"
