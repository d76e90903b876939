"""Settings: found by walking up to dirt.toml, then DIRT_* variables, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from dirt.config import find_project, load_settings
from dirt.errors import ConfigError, ProjectNotFoundError


def test_the_project_is_found_from_a_subfolder(project: Path) -> None:
    deep = project / "tasks" / "examples"
    assert find_project(deep) == project


def test_outside_a_project_the_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFoundError, match="dirt create NAME"):
        find_project(tmp_path)


def test_the_default_store_is_a_sqlite_file_in_the_project(project: Path) -> None:
    settings = load_settings(project, environ={})
    assert settings.database_url == f"sqlite:///{project / 'proj.sqlite'}"


def test_dirt_database_url_overrides_the_store(project: Path) -> None:
    settings = load_settings(project, environ={"DIRT_DATABASE_URL": "sqlite:////tmp/other.db"})
    assert settings.database_url == "sqlite:////tmp/other.db"


def test_environment_variables_override_the_file(project: Path) -> None:
    settings = load_settings(
        project, environ={"DIRT_DISPATCH_ISOLATION": "thread", "DIRT_DISPATCH_MAX_ATTEMPTS": "5"}
    )
    assert settings.dispatch.isolation == "thread"
    assert settings.dispatch.max_attempts == 5


def test_dirt_project_names_the_project(project: Path) -> None:
    assert load_settings(environ={"DIRT_PROJECT": str(project)}).project_dir == project


def test_unknown_keys_and_bad_values_are_all_reported(project: Path) -> None:
    (project / "dirt.toml").write_text(
        '[project]\nname = "p"\ncolour = "red"\n[dispatch]\nisolation = "vm"\n'
        'max_attempts = "three"\n[extras]\nx = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(project, environ={})
    message = str(info.value)
    assert "project.colour: unknown key" in message
    assert "dispatch.isolation: 'vm' is not one of process, thread" in message
    assert "dispatch.max_attempts: expected int" in message
    assert "unknown section [extras]" in message


def test_broken_toml_is_reported_with_the_file(project: Path) -> None:
    (project / "dirt.toml").write_text("[project\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(project, environ={})
