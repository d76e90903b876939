"""`dirt submit --git`, `dirt hook install` and `dirt watch` as real commands, on real git
repositories and folders."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dirt.config import load_settings
from dirt.project import create_project
from dirt.service import Service
from dirt.views import detail_view
from tests.ci.conftest import CI_TASK, Repository, git_environment
from tests.conftest import DIRT, project_service, run_dirt, wait_for


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with the task ci.test and `[ci] tasks = ["ci.test"]`."""
    project = create_project(tmp_path / "proj")
    (project / "tasks" / "ci").mkdir()
    (project / "tasks" / "ci" / "__init__.py").write_text("")
    (project / "tasks" / "ci" / "test.py").write_text(CI_TASK)
    (project / "tasks" / "ci" / "lint.py").write_text(CI_TASK)
    config = project / "dirt.toml"
    config.write_text(config.read_text() + '\n[ci]\ntasks = ["ci.test"]\n')
    return project


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path, git_environment(tmp_path / "home"))


def submit_git(repo: Repository, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in repo.env.items() if not k.startswith("DIRT_")}
    return subprocess.run(
        [DIRT, "--project", str(project), "submit", "--git", *args],
        cwd=repo.checkout,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def status(project: Path, record_id: str) -> dict[str, Any]:
    """What `dirt status RECORD --json` prints (read in this process: quicker)."""
    with project_service(project) as service:
        return detail_view(service.record_detail(record_id))


def record_ids(project: Path) -> list[str]:
    service = Service(load_settings(project, environ={}))
    try:
        return [s.record.id for s in service.record_page(500)]
    finally:
        service.close()


# ---- dirt submit --git ---------------------------------------------------------------------


def test_submit_git_makes_a_record_of_head_with_the_ci_tasks(
    repo: Repository, project: Path
) -> None:
    sha = repo.commit("Add the frobnicator")
    done = submit_git(repo, project)
    assert done.returncode == 0, done.stderr
    assert f"record {sha} added: Add the frobnicator" in done.stdout
    detail = status(project, sha)
    assert detail["record"]["ref"] == "refs/heads/main"
    # What nodes clone: the URL of the branch's remote (origin).
    assert detail["record"]["repository"] == str(repo.bare)
    [task] = detail["tasks"]
    assert task["name"] == "ci.test"
    assert task["kwargs"] == {"sha": sha, "ref": "refs/heads/main", "repository": str(repo.bare)}


def test_submit_git_twice_adds_nothing_the_second_time(repo: Repository, project: Path) -> None:
    sha = repo.commit("Once")
    submit_git(repo, project)
    again = submit_git(repo, project)
    assert again.returncode == 0, again.stderr
    assert f"record {sha} exists: nothing added" in again.stdout
    assert len(status(project, sha)["tasks"]) == 1


def test_submit_git_takes_a_range_and_tasks_named_on_the_command_line(
    repo: Repository, project: Path
) -> None:
    first = repo.commit("one")
    second, third = repo.commit("two"), repo.commit("three")
    done = submit_git(repo, project, f"{first}..HEAD", "-t", "ci.lint")
    assert done.returncode == 0, done.stderr
    for sha in (second, third):
        assert [t["name"] for t in status(project, sha)["tasks"]] == ["ci.lint"]
    assert first not in record_ids(project)


def test_submit_git_with_a_name_that_is_no_commit_stores_nothing(
    repo: Repository, project: Path
) -> None:
    repo.commit("one")
    done = submit_git(repo, project, "HEAD", "no-such-branch")
    assert done.returncode == 2
    assert "'no-such-branch' names no commit" in done.stderr
    assert record_ids(project) == []


def test_submit_git_needs_tasks_from_somewhere(repo: Repository, tmp_path: Path) -> None:
    create_project(tmp_path / "bare")
    repo.commit("one")
    done = submit_git(repo, tmp_path / "bare")
    assert done.returncode == 2
    assert "name the tasks with -t NAME, or list them in [ci] tasks" in done.stderr


def test_submit_git_refuses_fields_a_commit_gives(repo: Repository, project: Path) -> None:
    repo.commit("one")
    done = submit_git(repo, project, "-d", "mine")
    assert done.returncode == 2
    assert "do not go with --git" in done.stderr


def test_submit_without_a_target_or_git_is_a_usage_error(project: Path) -> None:
    done = run_dirt("submit", cwd=project)
    assert done.returncode == 2 and "give one TARGET" in done.stderr


# ---- dirt hook install ---------------------------------------------------------------------


def test_hook_install_adds_the_hook_path_to_a_server_url(repo: Repository) -> None:
    done = run_dirt(
        "hook", "install", str(repo.bare), "--url", "http://ci.example.org:8080/", cwd=repo.bare
    )
    assert done.returncode == 0, done.stderr
    assert "each push is posted to http://ci.example.org:8080/hooks/git" in done.stdout
    hook = repo.bare / "hooks" / "post-receive"
    assert os.access(hook, os.X_OK)
    assert "DIRT_URL='http://ci.example.org:8080/hooks/git'" in hook.read_text()


def test_hook_install_says_when_the_token_variable_is_unset_here(repo: Repository) -> None:
    done = run_dirt(
        "hook", "install", str(repo.bare), "--url", "http://ci:8080", "--token-env", "CI_TOKEN"
    )
    assert done.returncode == 0
    assert "$CI_TOKEN is not set here" in done.stderr


def test_hook_install_rejects_a_bad_url(repo: Repository) -> None:
    done = run_dirt("hook", "install", str(repo.bare), "--url", "ci.example.org")
    assert done.returncode == 2
    assert "is not an http:// or https:// URL" in done.stderr
    assert not (repo.bare / "hooks" / "post-receive").exists()


def test_hook_install_into_a_folder_that_is_no_repository_fails(tmp_path: Path) -> None:
    git_environment(tmp_path / "home")  # needs git
    done = run_dirt("hook", "install", str(tmp_path), "--url", "http://ci:8080")
    assert done.returncode == 2 and "is not a git checkout or repository" in done.stderr


# ---- dirt watch ----------------------------------------------------------------------------


def test_watch_makes_a_record_per_new_file_once(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    data = folder / "run7.dat"
    data.write_bytes(b"event data")
    args = ("watch", str(folder), "-t", "ci.test", "--pattern", "*.dat", "--interval", "0.1")
    (folder / "notes.txt").write_text("not data")
    first = run_dirt(*args, "--once", cwd=project)
    assert first.returncode == 0, first.stderr
    digest = hashlib.sha256(b"event data").hexdigest()
    record_id = f"run7.dat@{digest[:12]}"
    assert f"record {record_id} added: {data}" in first.stdout
    detail = status(project, record_id)
    assert (detail["record"]["path"], detail["record"]["size"]) == (str(data), 10)
    assert detail["record"]["sha256"] == digest
    assert detail["tasks"][0]["kwargs"] == {"path": str(data)}
    again = run_dirt(*args, "--once", cwd=project)  # a restart: the store remembers the file
    assert "added" not in again.stdout
    assert record_ids(project) == [record_id]


def test_watch_runs_until_interrupted_and_takes_files_as_they_come(
    project: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    proc = subprocess.Popen(
        [DIRT, "watch", str(folder), "-t", "ci.test", "--interval", "0.1"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (folder / "a.dat").write_bytes(b"a")

        wait_for(lambda: record_ids(project), 30, 0.1, "the watched file's record")
    finally:
        proc.send_signal(signal.SIGINT)
        output, errors = proc.communicate(timeout=30)
    assert proc.returncode == 0, errors
    assert "record a.dat@" in output and "stopped" in output


def test_watch_with_an_unknown_task_fails_at_once(project: Path, tmp_path: Path) -> None:
    done = run_dirt("watch", str(tmp_path), "-t", "no.such", "--once", cwd=project)
    assert done.returncode == 2
    assert "no task module 'no.such' (tasks/no/such.py)" in done.stderr
