"""`dirt watch DIR`: new files in a real folder become records, once each, once complete."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dirt.db import sources as sources_db
from dirt.db.engine import make_engine, write_transaction
from dirt.service import Service
from dirt.sources.watch import (
    FolderScanner,
    MemorySeenFiles,
    NewFile,
    StoreSeenFiles,
    file_documents,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "incoming"
    path.mkdir()
    return path


def write(path: Path, data: bytes, mtime: int = 1_700_000_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return path


def taken(scanner: FolderScanner) -> list[str]:
    return [f.relative for f in scanner.scan()]


def test_a_file_is_taken_on_the_second_look_when_it_did_not_change(folder: Path) -> None:
    write(folder / "run1.dat", b"data")
    scanner = FolderScanner(folder, MemorySeenFiles())
    assert taken(scanner) == []
    [item] = scanner.scan()
    assert (item.relative, item.size) == ("run1.dat", 4)
    assert item.sha256 == hashlib.sha256(b"data").hexdigest()
    assert item.path == folder.resolve() / "run1.dat"


def test_a_growing_file_waits_until_it_stops_growing(folder: Path) -> None:
    scanner = FolderScanner(folder, MemorySeenFiles())
    write(folder / "run1.dat", b"part")
    scanner.scan()
    write(folder / "run1.dat", b"part, more", mtime=1_700_000_001)
    assert taken(scanner) == []
    assert taken(scanner) == ["run1.dat"]


def test_a_file_is_taken_once_by_a_scanner(folder: Path) -> None:
    write(folder / "run1.dat", b"data")
    scanner = FolderScanner(folder, MemorySeenFiles())
    scanner.scan()
    assert taken(scanner) == ["run1.dat"]
    assert taken(scanner) == []


def test_a_file_taken_before_a_restart_is_not_taken_again(folder: Path, service: Service) -> None:
    write(folder / "run1.dat", b"data")
    scanner = FolderScanner(folder, StoreSeenFiles(service.engine, folder))
    scanner.scan()
    [item] = scanner.scan()
    with write_transaction(service.engine) as conn:  # as `dirt watch` does with the record
        sources_db.add_watched(conn, str(folder.resolve()), item.watched(), 0.0)
    engine = make_engine(service.settings.database_url)  # a new process, as far as it knows
    try:
        again = FolderScanner(folder, StoreSeenFiles(engine, folder))
        assert taken(again) == [] and taken(again) == []
    finally:
        engine.dispose()


def test_a_file_rewritten_with_new_content_is_new_data(folder: Path) -> None:
    seen = MemorySeenFiles()
    write(folder / "run1.dat", b"first")
    scanner = FolderScanner(folder, seen)
    scanner.scan()
    [first] = scanner.scan()
    seen.add(first.watched())
    write(folder / "run1.dat", b"second", mtime=1_700_000_100)
    scanner.scan()
    [second] = scanner.scan()
    assert second.record_id != first.record_id


def test_a_file_touched_without_changing_is_not_taken_again(folder: Path) -> None:
    seen = MemorySeenFiles()
    write(folder / "run1.dat", b"same")
    scanner = FolderScanner(folder, seen)
    scanner.scan()
    seen.add(scanner.scan()[0].watched())
    write(folder / "run1.dat", b"same", mtime=1_700_000_100)
    restarted = FolderScanner(folder, seen)
    assert taken(restarted) == [] and taken(restarted) == []


def test_files_in_subfolders_are_found(folder: Path) -> None:
    write(folder / "2024" / "05" / "run1.dat", b"data")
    scanner = FolderScanner(folder, MemorySeenFiles())
    scanner.scan()
    assert taken(scanner) == ["2024/05/run1.dat"]


def test_hidden_files_and_folders_are_never_taken(folder: Path) -> None:
    write(folder / ".run1.dat.part", b"data")
    write(folder / ".staging" / "run2.dat", b"data")
    scanner = FolderScanner(folder, MemorySeenFiles())
    scanner.scan()
    assert taken(scanner) == []


def test_the_pattern_matches_file_names(folder: Path) -> None:
    write(folder / "a" / "run1.root", b"1")
    write(folder / "run2.log", b"2")
    scanner = FolderScanner(folder, MemorySeenFiles(), pattern="*.root")
    scanner.scan()
    assert taken(scanner) == ["a/run1.root"]


def test_a_pattern_with_a_slash_matches_the_relative_path(folder: Path) -> None:
    write(folder / "raw" / "run1.dat", b"1")
    write(folder / "cooked" / "run1.dat", b"2")
    scanner = FolderScanner(folder, MemorySeenFiles(), pattern="raw/*")
    scanner.scan()
    assert taken(scanner) == ["raw/run1.dat"]


def test_min_age_holds_back_files_modified_recently(folder: Path) -> None:
    write(folder / "run1.dat", b"data", mtime=1_700_000_000)
    scanner = FolderScanner(folder, MemorySeenFiles(), min_age=60)
    scanner.scan(now=1_700_000_010)
    assert scanner.scan(now=1_700_000_030) == []
    assert [f.relative for f in scanner.scan(now=1_700_000_061)] == ["run1.dat"]


def test_a_file_whose_record_was_not_stored_is_offered_again(folder: Path) -> None:
    write(folder / "run1.dat", b"data")
    scanner = FolderScanner(folder, MemorySeenFiles())
    scanner.scan()
    [item] = scanner.scan()
    scanner.forget(item)
    assert taken(scanner) == ["run1.dat"]


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderScanner(tmp_path / "nope", MemorySeenFiles()).scan()


def test_record_ids_are_readable_and_valid_ids() -> None:
    item = NewFile(Path("/d/run 7/a%b.dat"), "run 7/a%b.dat", 1, 1, "0123456789ab" + "c" * 52)
    assert item.record_id == "run 7:a_b.dat@0123456789ab"


def test_a_new_file_makes_a_record_and_its_tasks_the_service_stores(
    folder: Path, service: Service, add_task_module: Callable[[str, str], str]
) -> None:
    add_task_module("data.analyse", "def execute(path):\n    return {'success': True}\n")
    write(folder / "run1.dat", b"data")
    scanner = FolderScanner(folder, MemorySeenFiles())
    scanner.scan()
    [item] = scanner.scan()
    submission = service.submit(file_documents(item, ["data.analyse"]))
    record = service.record(item.record_id)
    assert (record.description, record.extra) == (
        "run1.dat",
        {"path": str(item.path), "size": 4, "sha256": item.sha256},
    )
    assert submission.tasks[0].kwargs == {"path": str(item.path)}
