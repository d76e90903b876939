"""`dirt submit --git`: records read from a real checkout with the git CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dirt.ci_config import CiSettings
from dirt.db import records as records_db
from dirt.db.engine import read_transaction
from dirt.service import Service
from dirt.sources.git import GitError, default_repository, pushed_commits, submit_documents
from dirt.sources.push import only_new
from tests.sources.conftest import run_git

CI = CiSettings(tasks=["ci.build", "ci.test"], kwargs={"ci.build": {"jobs": 4}})


def records_of(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["type"] == "record"]


def test_a_record_from_head_is_the_commit(checkout: Path, commit: Callable[..., str]) -> None:
    sha = commit('Fix the "frobnicator" — für alle')
    [record] = records_of(submit_documents(checkout, [], CI))
    assert record == {
        "_id": sha,
        "type": "record",
        "description": 'Fix the "frobnicator" — für alle',
        "sha": sha,
        "ref": "refs/heads/main",
        "repository": str(checkout),
        "author": "Ada Lovelace <ada@example.org>",
    }


def test_each_task_gets_sha_ref_and_repository_plus_its_extra_kwargs(
    checkout: Path, commit: Callable[..., str]
) -> None:
    sha = commit("one")
    tasks = [d for d in submit_documents(checkout, ["HEAD"], CI) if d["type"] == "task"]
    base = {"sha": sha, "ref": "refs/heads/main", "repository": str(checkout)}
    assert [(t["name"], t["record_id"], t["kwargs"]) for t in tasks] == [
        ("ci.build", sha, {"jobs": 4, **base}),
        ("ci.test", sha, base),
    ]


def test_several_revs_make_one_record_each(checkout: Path, commit: Callable[..., str]) -> None:
    first, second = commit("one"), commit("two")
    docs = submit_documents(checkout, ["HEAD~1", "main"], CI)
    assert [r["_id"] for r in records_of(docs)] == [first, second]


def test_a_range_names_every_commit_in_it_oldest_first(
    checkout: Path, commit: Callable[..., str]
) -> None:
    base = commit("base")
    shas = [commit(f"change {i}") for i in range(3)]
    docs = submit_documents(checkout, [f"{base}..main"], CI)
    assert [r["_id"] for r in records_of(docs)] == shas


def test_a_commit_named_twice_is_one_record(checkout: Path, commit: Callable[..., str]) -> None:
    sha = commit("one")
    assert [r["_id"] for r in records_of(submit_documents(checkout, ["HEAD", sha], CI))] == [sha]


def test_a_bare_sha_has_no_ref(checkout: Path, commit: Callable[..., str]) -> None:
    sha = commit("one")
    docs = submit_documents(checkout, [sha], CI)
    assert "ref" not in records_of(docs)[0]
    assert docs[1]["kwargs"]["ref"] is None


def test_a_rev_that_names_no_commit_is_an_error_naming_it(
    checkout: Path, commit: Callable[..., str]
) -> None:
    commit("one")
    with pytest.raises(GitError, match="'no-such-branch' names no commit"):
        submit_documents(checkout, ["HEAD", "no-such-branch"], CI)


def test_a_folder_that_is_no_repository_is_an_error(tmp_path: Path, git_env: dict) -> None:
    with pytest.raises(GitError, match="is not a git checkout or repository"):
        submit_documents(tmp_path, [], CI)


def test_nodes_clone_the_branch_remote_when_there_is_one(
    checkout: Path, commit: Callable[..., str], bare: Path
) -> None:
    commit("one")
    run_git(checkout, "push", "-q", "-u", "origin", "main")
    assert default_repository(checkout) == str(bare)


def test_ci_repository_overrides_what_nodes_clone(
    checkout: Path, commit: Callable[..., str]
) -> None:
    commit("one")
    ci = CiSettings(tasks=["ci.build"], repository="https://git.example.org/p.git")
    docs = submit_documents(checkout, [], ci)
    assert docs[0]["repository"] == docs[1]["kwargs"]["repository"] == ci.repository


def test_a_changeset_url_template_links_the_commit(
    checkout: Path, commit: Callable[..., str]
) -> None:
    sha = commit("one")
    ci = CiSettings(changeset_url="https://cgit.example.org/p/commit/?id={sha}")
    assert submit_documents(checkout, [], ci)[0]["changeset_url"].endswith(f"?id={sha}")


def test_the_same_commit_submitted_twice_is_stored_once(
    checkout: Path,
    commit: Callable[..., str],
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    for name in CI.tasks:
        add_task_module(name, "def execute(**kwargs):\n    return {'success': True}\n")
    sha = commit("one")

    def submit() -> int:
        docs = submit_documents(checkout, [], CI)
        with read_transaction(service.engine) as conn:
            fresh = only_new(docs, lambda ids: records_db.existing_record_ids(conn, ids))
        return len(service.submit(fresh).tasks) if fresh else 0

    assert submit() == 2
    assert submit() == 0
    assert service.record(sha).extra["author"] == "Ada Lovelace <ada@example.org>"
    assert len(service.record_detail(sha).tasks) == 2


def test_pushed_commits_are_those_new_to_the_repository(
    checkout: Path, commit: Callable[..., str], bare: Path
) -> None:
    old = commit("old")
    run_git(checkout, "push", "-q", "origin", "main")
    run_git(checkout, "switch", "-q", "-c", "topic")
    new = [commit("topic 1"), commit("topic 2")]
    run_git(checkout, "push", "-q", "origin", "topic")
    commits, truncated = pushed_commits(bare, "refs/heads/topic", None, new[-1])
    assert [c.sha for c in commits] == new
    assert old not in [c.sha for c in commits] and not truncated


def test_pushed_commits_stop_at_the_limit_and_say_so(
    checkout: Path, commit: Callable[..., str], bare: Path
) -> None:
    shas = [commit(f"c{i}") for i in range(4)]
    run_git(checkout, "push", "-q", "origin", "main")
    commits, truncated = pushed_commits(bare, "refs/heads/main", None, shas[-1], limit=2)
    assert [c.sha for c in commits] == shas[-2:] and truncated
