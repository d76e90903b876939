"""Output chunks and attachments in the store, on SQLite and PostgreSQL: output read from any
offset, kept within the limit as it is stored; attachments stored before the blob store existed
still served after the upgrade."""

from __future__ import annotations

import hashlib
import time

from alembic import command
from sqlalchemy import Engine, text

from dirt.config import Settings
from dirt.db.engine import make_engine, write_transaction
from dirt.db.migrate import alembic_config
from dirt.models import Attachment, OutputChunk, TaskState
from dirt.service import Finished, Service
from dirt.service.queries import SKIPPED, TRUNCATED


def started_task(store: Service) -> str:
    (task,) = store.submit_tasks("r1", ["examples.simple"]).tasks
    store.save_node("n1", {"cpu_count": 1})
    assert store.dispatch([], [], [task.id]) == ([], [task.id])
    assert store.dispatch([], [(task.id, "n1", time.time(), 1)], []) == ([task.id], [])
    return task.id


def chunks(task_id: str, *pieces: tuple[int, bytes]) -> list[OutputChunk]:
    return [OutputChunk(task_id, 1, start, data) for start, data in pieces]


def test_output_is_read_from_any_offset_while_the_task_runs(store: Service) -> None:
    task_id = started_task(store)
    store.dispatch([], [], [], chunks(task_id, (0, b"hello\n"), (6, b"world\n")))
    view = store.task_output(task_id)
    assert (view.data, view.next_offset, view.live, view.end) == (b"hello\nworld\n", 12, True, 12)
    assert store.task_output(task_id, 8).data == b"rld\n"
    assert store.task_output(task_id, 12).data == b""
    assert store.task_output(task_id, until=6).data == b"hello\n"


def finish(store: Service, task_id: str) -> None:
    done = Finished(
        task_id, 1, "n1", TaskState.SUCCEEDED, {"success": True}, None, None, completed=time.time()
    )
    store.dispatch([done], [], [])


def test_a_gap_reads_as_one_line_saying_how_many_bytes_are_missing(store: Service) -> None:
    task_id = started_task(store)
    store.dispatch([], [], [], chunks(task_id, (0, b"head\n"), (1005, b"tail\n")))
    view = store.task_output(task_id)
    # While the task runs, the bytes may yet come (the node sends the rest of the tail at the
    # end); once it has ended, they were not kept.
    assert view.data == b"head\n" + SKIPPED.format(n=1000).encode() + b"tail\n"
    assert view.next_offset == 1010
    finish(store, task_id)
    view = store.task_output(task_id)
    assert view.data == b"head\n" + TRUNCATED.format(n=1000).encode() + b"tail\n"


def test_beyond_the_head_only_the_newest_tail_is_kept(store: Service) -> None:
    store.settings.dispatch.output_limit = 200  # head 100, tail 100
    task_id = started_task(store)
    for start in range(0, 1000, 50):
        store.dispatch([], [], [], chunks(task_id, (start, bytes([65 + start // 50]) * 50)))
    data = store.task_output(task_id).data
    assert data.startswith(b"A" * 50 + b"B" * 50 + b"\n[... ")
    assert data.endswith(b"S" * 50 + b"T" * 50)
    assert b"R" not in data and b"C" not in data


def test_finished_output_says_no_more_data_and_earlier_attempts_stay_readable(
    store: Service,
) -> None:
    task_id = started_task(store)
    store.dispatch(
        [
            Finished(
                task_id,
                1,
                "n1",
                TaskState.SUCCEEDED,
                {"success": True},
                None,
                None,
                output="done\n",
                completed=time.time(),
            )
        ],
        [],
        [],
        chunks(task_id, (0, b"done\n")),
    )
    view = store.task_output(task_id)
    assert (view.data, view.live, view.state) == (b"done\n", False, TaskState.SUCCEEDED)
    store.retry_task(task_id)
    again = store.task_output(task_id)
    assert (again.attempt, again.data, again.live) == (1, b"done\n", True)  # waiting again
    assert store.task_output(task_id, attempt=1).data == b"done\n"


def test_attachments_are_stored_as_blobs_named_by_sha256(store: Service) -> None:
    task_id = started_task(store)
    contents = b"x" * 5000
    attachment = Attachment(task_id, "x.bin", "X", "application/octet-stream", 0, contents, 1.0)
    store.dispatch(
        [
            Finished(
                task_id,
                1,
                "n1",
                TaskState.SUCCEEDED,
                {"success": True},
                None,
                None,
                attachments=[attachment],
            )
        ],
        [],
        [],
    )
    sha = hashlib.sha256(contents).hexdigest()
    with store.open_attachment(task_id, "x.bin") as opened:
        assert (opened.attachment.sha256, opened.attachment.size) == (sha, 5000)
        assert opened.path == store.blobs.path(sha)
        assert opened.file.read() == contents
    assert store.attachment(task_id, "x.bin").content == contents


def test_attachments_stored_before_the_blob_store_are_still_served(
    store_settings: Settings,
) -> None:
    engine: Engine = make_engine(store_settings.database_url)
    try:
        config = alembic_config()
        with write_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0005")
            conn.execute(
                text(
                    "INSERT INTO records (id, description, created, extra, seq) "
                    "VALUES ('old', '', 1.0, '{}', 1)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO tasks (id, record_id, name, requires, created, state, attempts, "
                    "extra, seq, priority, cancel_requested) VALUES ('t-old', 'old', "
                    "'examples.simple', '[]', 1.0, 'succeeded', 1, '{}', 1, 0, false)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO attachments (task_id, filename, link_name, content_type, size, "
                    "content, created) VALUES ('t-old', 'log.txt', 'Log', 'text/plain', 9, "
                    ":content, 1.0)"
                ),
                {"content": b"old bytes"},
            )
        service = Service(store_settings, engine=engine)
        with service.open_attachment("t-old", "log.txt") as opened:
            assert opened.attachment.sha256 is None and opened.path is None
            assert opened.file.read() == b"old bytes"
        _, attached, _ = service.task_detail("t-old")
        assert [(a.filename, a.size) for a in attached] == [("log.txt", 9)]
        assert not service.blobs.root.exists()  # nothing was moved
    finally:
        engine.dispose()
