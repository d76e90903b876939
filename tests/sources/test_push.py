"""From a push to documents: which commits make records, with which tasks."""

from __future__ import annotations

import logging

import pytest

from dirt.ci_config import CiSettings
from dirt.sources.push import Commit, Push, Update, only_new, push_documents

A, B, C = ("a" * 40, "b" * 40, "c" * 40)
NOW = 1_700_000_000.0


def make_push(*updates: Update) -> Push:
    return Push("git", "https://git.example.org/p.git", updates, project="team/p")


def update(ref: str, *shas: str) -> Update:
    commits = tuple(Commit(sha, f"subject {sha[0]}", "Ada <ada@example.org>") for sha in shas)
    return Update(ref=ref, before=None, head=commits[-1], commits=commits)


def record_ids(docs: list[dict]) -> list[str]:
    return [d["_id"] for d in docs if d["type"] == "record"]


def test_a_push_makes_one_record_for_each_updated_head() -> None:
    found = push_documents(
        make_push(update("refs/heads/main", A, B), update("refs/heads/dev", C)),
        CiSettings(tasks=["ci.test"]),
        NOW,
    )
    assert record_ids(found.documents) == [B, C]


def test_every_commit_makes_one_record_per_new_commit_oldest_first() -> None:
    found = push_documents(
        make_push(update("refs/heads/main", A, B, C)),
        CiSettings(every_commit=True),
        NOW,
    )
    assert record_ids(found.documents) == [A, B, C]
    created = [d["created"] for d in found.documents if d["type"] == "record"]
    assert created == sorted(created) and len(set(created)) == 3


def test_a_commit_pushed_to_two_branches_at_once_is_one_record() -> None:
    found = push_documents(
        make_push(update("refs/heads/main", A), update("refs/heads/copy", A)),
        CiSettings(),
        NOW,
    )
    assert record_ids(found.documents) == [A]
    assert found.documents[0]["ref"] == "refs/heads/main"


def test_records_carry_the_forge_project_for_commit_statuses() -> None:
    found = push_documents(make_push(update("refs/heads/main", A)), CiSettings(), NOW)
    assert found.documents[0]["project"] == "team/p"


def test_a_branch_outside_the_patterns_is_ignored_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ci = CiSettings(tasks=["ci.test"], branches=["main", "release/*"])
    with caplog.at_level(logging.INFO, logger="dirt.sources"):
        found = push_documents(
            make_push(update("refs/heads/feature/x", A), update("refs/heads/release/2.0", B)),
            ci,
            NOW,
        )
    assert record_ids(found.documents) == [B]
    assert "refs/heads/feature/x" in caplog.text and "not in [ci] branches" in caplog.text
    assert len(found.ignored) == 1


def test_patterns_match_full_refs_too() -> None:
    ci = CiSettings(branches=["refs/tags/v*"])
    assert ci.wants("refs/tags/v1.0") and not ci.wants("refs/heads/main")


def test_no_patterns_take_every_ref() -> None:
    assert CiSettings().wants("refs/heads/anything/at/all")


def test_tasks_get_the_commit_in_their_kwargs() -> None:
    ci = CiSettings(tasks=["ci.build"], kwargs={"ci.build": {"target": "all"}})
    found = push_documents(make_push(update("refs/heads/main", A)), ci, NOW)
    [task] = [d for d in found.documents if d["type"] == "task"]
    assert task["kwargs"] == {
        "target": "all",
        "sha": A,
        "ref": "refs/heads/main",
        "repository": "https://git.example.org/p.git",
    }


def test_only_new_drops_stored_records_and_their_tasks() -> None:
    found = push_documents(
        make_push(update("refs/heads/main", A), update("refs/heads/dev", B)),
        CiSettings(tasks=["ci.test"]),
        NOW,
    )
    fresh = only_new(found.documents, lambda ids: ids & {A})
    assert [(d["type"], d.get("record_id") or d["_id"]) for d in fresh] == [
        ("record", B),
        ("task", B),
    ]
