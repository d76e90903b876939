"""`dirt create`: a project folder with settings, a README and example task modules."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dirt.errors import InputError, ProjectExistsError
from dirt.project import TaskModules, create_project, valid_task_name


def test_create_makes_settings_readme_and_examples(tmp_path: Path) -> None:
    path = create_project(tmp_path / "physics", db_name="runs")
    config = tomllib.loads((path / "dirt.toml").read_text())
    assert config["project"] == {"name": "physics", "database": "runs"}
    assert (path / "README.md").read_text().startswith("# physics\n")
    for name in ("simple", "arguments", "attachments"):
        source = (path / "tasks" / "examples" / f"{name}.py").read_text()
        assert "__channelexec__" in source and "def execute(" in source
    assert (path / "tasks" / "__init__.py").is_file()


def test_the_database_name_defaults_to_the_project_name(tmp_path: Path) -> None:
    path = create_project(tmp_path / "physics")
    assert tomllib.loads((path / "dirt.toml").read_text())["project"]["database"] == "physics"


def test_create_refuses_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ProjectExistsError, match="already exists"):
        create_project(tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_create_refuses_a_name_that_is_no_project_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a usable project name"):
        create_project(tmp_path / "ok", name="no/slashes")
    assert not (tmp_path / "ok").exists()


def test_task_names_are_dotted_identifiers_only() -> None:
    assert valid_task_name("examples.simple")
    for bad in ("", "a..b", "../x", "a/b", "a.b.", "1abc", "a-b", "class.x", None, 3):
        assert not valid_task_name(bad)


def test_task_modules_resolve_names_to_files_and_hash_them(project: Path) -> None:
    modules = TaskModules(project / "tasks")
    module = modules.load("examples.simple")
    assert module.path == (project / "tasks/examples/simple.py").resolve()
    assert len(module.sha256) == 64
    assert modules.exists("examples.attachments")


def test_a_symlink_out_of_tasks_is_not_a_task(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "evil.py"
    outside.write_text("print('x')")
    (project / "tasks" / "evil.py").symlink_to(outside)
    assert not TaskModules(project / "tasks").exists("evil")
