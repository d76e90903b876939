"""Submission validation: a bad submission is rejected whole, with every problem listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dirt.errors import SubmissionError
from dirt.service import Service

SEED = Path(__file__).parents[1] / "src" / "dirt" / "seed" / "test_data.json"


def problems_of(service: Service, payload: object) -> list[str]:
    with pytest.raises(SubmissionError) as info:
        service.submit(payload)
    return info.value.problems


def test_the_seed_documents_are_accepted_as_a_list(service: Service) -> None:
    submission = service.submit(json.loads(SEED.read_text()))
    assert [r.id for r in submission.records] == ["r123", "r124"]
    assert len(submission.tasks) == 3


def test_the_seed_documents_are_accepted_inside_docs(service: Service) -> None:
    submission = service.submit({"docs": json.loads(SEED.read_text())})
    assert len(submission.tasks) == 3


def test_extra_fields_of_records_and_tasks_come_back_as_they_came(service: Service) -> None:
    service.submit(
        [
            {
                "_id": "r1",
                "type": "record",
                "sha": "abc123",
                "changeset_url": "http://x/1",
                "nested": {"a": [1, 2]},
            },
            {
                "_id": "t1",
                "type": "task",
                "record_id": "r1",
                "name": "examples.simple",
                "label": "smoke",
            },
        ]
    )
    detail = service.record_detail("r1")
    assert detail.record.to_doc()["sha"] == "abc123"
    assert detail.record.to_doc()["nested"] == {"a": [1, 2]}
    assert detail.tasks[0].to_doc()["label"] == "smoke"


def test_task_ids_are_generated_and_created_defaults_to_now(service: Service) -> None:
    submission = service.submit(
        [
            {"_id": "r1", "type": "record"},
            {"type": "task", "record_id": "r1", "name": "examples.simple"},
        ]
    )
    task = submission.tasks[0]
    assert len(task.id) == 32 and int(task.id, 16) >= 0
    assert task.created > 1.7e9


def test_every_problem_is_listed_and_nothing_is_stored(service: Service) -> None:
    problems = problems_of(
        service,
        [
            {"_id": "r1", "type": "record"},
            {"_id": "x", "type": "recipe"},
            {"type": "task", "name": "examples.simple"},
            {"type": "task", "record_id": "nope", "name": "examples.simple"},
            {"type": "task", "record_id": "r1", "name": "examples.missing"},
            {"type": "task", "record_id": "r1", "name": "../etc/passwd"},
            {"type": "task", "record_id": "r1", "name": "examples.simple", "kwargs": [1]},
            {"type": "task", "record_id": "r1", "name": "examples.simple", "priority": "high"},
            {"_id": "r1", "type": "record"},
        ],
    )
    text = "\n".join(problems)
    assert "unknown type 'recipe'" in text
    assert "has no 'record_id'" in text
    assert "record 'nope' exists neither in the store nor in this submission" in text
    assert "'examples.missing' is not a module under tasks/" in text
    assert "'../etc/passwd' is not a dotted Python identifier" in text
    assert "'kwargs' must be an object" in text
    assert "'priority' must be an integer" in text
    assert "duplicate id 'r1'" in text
    assert len(problems) == 8
    assert service.record_page() == []


def test_a_record_that_exists_is_a_conflict(service: Service) -> None:
    service.submit([{"_id": "r1", "type": "record"}])
    assert (
        "record 'r1' already exists" in problems_of(service, [{"_id": "r1", "type": "record"}])[0]
    )


def test_a_task_id_that_exists_is_a_conflict(service: Service) -> None:
    docs = [
        {"_id": "r1", "type": "record"},
        {"_id": "t1", "type": "task", "record_id": "r1", "name": "examples.simple"},
    ]
    service.submit(docs)
    problems = problems_of(service, docs[1:])
    assert problems == ["task id 't1' already exists"]


def test_tasks_may_refer_to_a_stored_record(service: Service) -> None:
    service.submit([{"_id": "r1", "type": "record"}])
    submission = service.submit([{"type": "task", "record_id": "r1", "name": "examples.simple"}])
    assert submission.tasks[0].record_id == "r1"


def test_state_fields_are_refused(service: Service) -> None:
    problems = problems_of(
        service,
        [
            {"_id": "r1", "type": "record"},
            {"type": "task", "record_id": "r1", "name": "examples.simple", "state": "succeeded"},
        ],
    )
    assert problems == ["document 2: 'state' is set by dirt, not by a submission"]


def test_wrong_types_are_named(service: Service) -> None:
    problems = problems_of(
        service,
        [
            {"_id": 5, "type": "record"},
            {"_id": "r2", "type": "record", "description": ["x"], "created": "yesterday"},
        ],
    )
    assert any("record '_id' must be a non-empty string, got 5" in p for p in problems)
    assert any("'description' must be a string" in p for p in problems)
    assert any("'created' must be epoch seconds" in p for p in problems)


def test_a_bad_requirement_names_the_expression(service: Service) -> None:
    problems = problems_of(
        service,
        [
            {"_id": "r1", "type": "record"},
            {
                "type": "task",
                "record_id": "r1",
                "name": "examples.simple",
                "requires": ["architecture equals arm64"],
            },
        ],
    )
    assert "'architecture equals arm64' does not parse" in problems[0]


def test_neither_list_nor_docs_is_refused(service: Service) -> None:
    assert "expected a JSON list of documents" in problems_of(service, {"records": []})[0]


def test_submit_tasks_creates_the_record_then_adds_to_it(service: Service) -> None:
    first = service.submit_tasks("r9", ["examples.simple"], description="nine")
    second = service.submit_tasks("r9", ["examples.arguments"], kwargs={"cat": 1, "dog": 2})
    assert [r.id for r in first.records] == ["r9"] and second.records == []
    detail = service.record_detail("r9")
    assert detail.record.description == "nine"
    assert sorted(t.name for t in detail.tasks) == ["examples.arguments", "examples.simple"]


def test_parse_since_takes_times_ago_dates_and_epoch_seconds() -> None:
    from datetime import datetime

    from dirt.documents import parse_since
    from dirt.errors import InputError

    now = 1_000_000.0
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5d", now) == now - 1.5 * 86400
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("2024-05-01", now) == datetime(2024, 5, 1).timestamp()
    assert parse_since("2024-05-01 12:30", now) == datetime(2024, 5, 1, 12, 30).timestamp()
    with pytest.raises(InputError, match="a time ago"):
        parse_since("last tuesday", now)
