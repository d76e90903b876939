"""`Service.submit_new`: every change source's way in, taken once however often it comes;
on SQLite and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dirt.config import load_settings
from dirt.db import records as records_db
from dirt.db.engine import write_transaction
from dirt.db.sources import WatchedFile
from dirt.errors import SubmissionError
from dirt.models import Record
from dirt.service import Service
from dirt.service import intake as intake_module

SHA = "1481a2de7b2a7d02428ad93446ab166be7793fbb"


def commit_docs(sha: str = SHA, task: str = "examples.simple") -> list[dict[str, Any]]:
    return [
        {"_id": sha, "type": "record", "description": "Add", "sha": sha},
        {"type": "task", "record_id": sha, "name": task, "kwargs": {"sha": sha}},
    ]


def test_new_records_are_stored_with_their_tasks(store: Service) -> None:
    taken = store.submit_new(commit_docs())
    assert [r.id for r in taken.records] == [SHA] and len(taken.tasks) == 1
    assert (taken.existing, taken.replay) == ([], False)
    assert store.record(SHA).extra["sha"] == SHA


def test_a_stored_record_is_left_as_it_is_with_its_tasks(store: Service) -> None:
    store.submit_new(commit_docs())
    other = "2" * 40
    taken = store.submit_new(commit_docs() + commit_docs(other))
    assert [r.id for r in taken.records] == [other]
    assert taken.existing == [SHA]
    assert len(store.record_detail(SHA).tasks) == 1


def test_a_delivery_is_taken_once(store: Service) -> None:
    assert store.submit_new(commit_docs(), delivery=("github", "d-1")).records
    replay = store.submit_new(commit_docs("3" * 40), delivery=("github", "d-1"))
    assert replay.replay and replay.records == []
    assert [s.record.id for s in store.record_page(10)] == [SHA]
    # The same id from another source is another delivery.
    assert store.submit_new(commit_docs("3" * 40), delivery=("gitlab", "d-1")).records


def test_a_watched_file_is_taken_once_per_content(store: Service) -> None:
    item = WatchedFile("run7.dat", 10, 1, "ab" * 32, "run7.dat@abababababab")
    docs = [{"_id": item.record_id, "type": "record", "path": "/data/run7.dat"}]
    assert store.submit_new(docs, watched=("/data", item)).records
    again = store.submit_new(docs, watched=("/data", item))
    assert again.replay and again.records == []


def test_a_rejected_submission_spends_no_delivery(store: Service) -> None:
    with pytest.raises(SubmissionError) as info:
        store.submit_new(commit_docs(task="no.such"), delivery=("github", "d-2"))
    assert "task 'no.such' is not a module under tasks/" in str(info.value)
    assert store.record_page(10) == []
    assert store.submit_new(commit_docs(), delivery=("github", "d-2")).records


@pytest.mark.postgres
def test_a_record_stored_between_the_look_and_the_insert_is_dropped_on_a_second_try(
    project: Path, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a record another writer stored after this transaction looked makes its
    insert fail on the primary key; the transaction runs again, and then leaves the record as
    it is. (Two dirt servers serialise on the change sequence, so this is the last line of
    defence; on SQLite the write lock is held from the transaction's start.)"""
    settings = load_settings(
        project,
        overrides={"project": {"database_url": postgres_server.new_database()}},
        environ={},
    )
    service = Service(settings)
    looks: list[set[str]] = []
    real = records_db.existing_record_ids

    def racing(conn: Any, ids: Any) -> set[str]:
        found = real(conn, ids)
        if not looks:  # another writer commits the record right after this look
            with write_transaction(service.engine) as other:
                records_db.insert_records(other, [Record(SHA, "theirs", 1.0, {})], 0)
        looks.append(found)
        return found

    monkeypatch.setattr(intake_module.records_db, "existing_record_ids", racing)
    try:
        taken = service.submit_new(commit_docs(), delivery=("github", "d-3"))
        assert (taken.records, taken.existing, taken.replay) == ([], [SHA], False)
        assert [SHA not in looks[0], SHA in looks[-1]] == [True, True]
        assert service.record(SHA).description == "theirs"
        assert service.record_detail(SHA).tasks == []
    finally:
        service.close()
