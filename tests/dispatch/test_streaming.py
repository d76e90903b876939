"""Output and attachments through the whole dispatcher on a real local node: output readable
while a task runs and kept within [dispatch] output_limit; attachments by path and by contents
in the blob store, downloaded with the task's own sha256, stored once; the attachment limit; a
node lost in the middle of an upload; task modules shipped as bytes."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_finished, wait_for

MiB = 1 << 20

PRINTS_SLOWLY = """\
import time

def execute(lines=6, pause=0.5):
    for i in range(lines):
        print(f"line {i}", flush=True)
        time.sleep(pause)
    return {"success": True}
"""

ATTACHES = """\
import hashlib, os

def execute(path, size, contents_size):
    data = os.urandom(size)
    with open(path, "wb") as fh:
        fh.write(data)
    blob = os.urandom(contents_size)
    return {
        "success": True,
        "sha": {"big.bin": hashlib.sha256(data).hexdigest(),
                "blob.bin": hashlib.sha256(blob).hexdigest(),
                "notes.txt": hashlib.sha256("café\\n".encode()).hexdigest()},
        "attachments": [
            {"filename": "big.bin", "path": path, "link_name": "Big"},
            {"filename": "blob.bin", "contents": blob},
            {"filename": "notes.txt", "contents": "café\\n"},
        ],
    }
"""


def submit(service: Service, name: str, n: int = 1, **kwargs: Any) -> list[str]:
    return [t.id for t in service.submit_tasks("r1", [name] * n, kwargs=kwargs or None).tasks]


def downloaded_sha(service: Service, task_id: str, filename: str) -> str:
    digest = hashlib.sha256()
    with service.open_attachment(task_id, filename) as opened:
        while data := opened.file.read(MiB):
            digest.update(data)
    return digest.hexdigest()


def blob_files(service: Service) -> list[Path]:
    return [p for p in service.blobs.root.rglob("*") if p.is_file()]


def wait_half_way(service: Service, timeout: float) -> None:
    """Wait until an upload has 1 MiB in the blob store's tmp/; no blob is visible yet."""
    uploads = service.blobs.root / "tmp"

    def half_way() -> bool:
        parts = list(uploads.glob("*.part")) if uploads.exists() else []
        return bool(parts) and parts[0].stat().st_size >= MiB

    wait_for(half_way, timeout=timeout, what="the upload to be half way")
    assert blob_files(service) == list(uploads.glob("*.part"))  # nothing visible yet


@pytest.fixture
def small_limits(settings_overrides: dict) -> None:
    settings_overrides["dispatch"].update(output_limit="256 KiB", attachment_limit="1 MiB")


# ---- output ---------------------------------------------------------------------------------


def test_output_is_readable_while_the_task_runs(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module("slow", PRINTS_SLOWLY)
    (task_id,) = submit(service, "slow")

    def seen_while_running() -> bool:
        view = service.task_output(task_id)
        return b"line 1\n" in view.data and view.state is TaskState.RUNNING and view.live

    wait_for(seen_while_running, timeout=20, what="line 1 while the task runs")
    (task,) = wait_finished(service, [task_id])
    view = service.task_output(task_id)
    expected = "".join(f"line {i}\n" for i in range(6))
    assert view.data == expected.encode()
    assert (view.next_offset, view.live, view.attempt) == (len(expected), False, 1)
    assert task.output == expected  # the last 64 KiB, kept with the task


def test_reading_from_an_offset_returns_the_rest(
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module("slow", PRINTS_SLOWLY)
    (task_id,) = submit(service, "slow", lines=3, pause=0.0)
    wait_finished(service, [task_id])
    assert service.task_output(task_id, 7).data == b"line 1\nline 2\n"
    assert service.task_output(task_id, 21).data == b""


def test_output_over_the_limit_keeps_head_and_tail_with_a_line_saying_so(
    small_limits: None,
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module(
        "loud",
        "def execute():\n    for i in range(200_000):\n        print(f'{i:>09}')\n"
        "    return {'success': True}\n",
    )
    (task_id,) = submit(service, "loud")
    (task,) = wait_finished(service, [task_id])
    assert task.state is TaskState.SUCCEEDED
    total = 200_000 * 10
    text = service.task_output(task_id, 0, max_bytes=4 * MiB).data.decode()
    head, marker, tail = text.partition("\n[... ")
    assert head.startswith("000000000\n000000001\n")
    dropped = int(marker and tail.split(" bytes truncated", 1)[0])
    assert dropped > total - 300 * 1024
    assert tail.endswith("000199998\n000199999\n")
    assert len(head) + len(tail) < 300 * 1024
    assert task.output.endswith("000199999\n")
    assert len(task.output) == 64 * 1024


PRINTS_FAST = """\
import time

def execute(seconds, per_second):
    line = 0
    for _ in range(seconds * 10):
        for _ in range(per_second // 1000):
            print(f"{line:>99}")
            line += 1
        time.sleep(0.1)
    return {"success": True, "lines": line}
"""


@pytest.fixture
def output_limit_8mib(settings_overrides: dict) -> None:
    settings_overrides["dispatch"]["output_limit"] = "8 MiB"


def test_output_faster_than_the_live_view_is_stored_whole_at_both_ends(
    output_limit_8mib: None,
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    # 3 MiB a second beyond the head: while it runs, only the newest MiB a second goes; when
    # it ends, the rest of the 4 MiB tail follows, so what is stored is exact at both ends.
    add_task_module("fast", PRINTS_FAST)
    (task_id,) = submit(service, "fast", seconds=4, per_second=3 << 20)
    (task,) = wait_finished(service, [task_id], timeout=60)
    assert task.state is TaskState.SUCCEEDED, task.reason
    expected = "".join(f"{i:>99}\n" for i in range(task.results["lines"])).encode()
    text = service.task_output(task_id, 0, max_bytes=64 * MiB).data
    head, _marker, tail = text.partition(b"\n[... ")
    dropped = int(tail.split(b" bytes truncated", 1)[0])
    tail = tail.split(b"...]\n", 1)[1]
    assert head == expected[: 4 * MiB]
    assert tail == expected[-4 * MiB :]
    assert dropped == len(expected) - 8 * MiB
    assert task.output == expected[-64 * 1024 :].decode()


# ---- attachments ----------------------------------------------------------------------------


def test_attachments_download_with_the_tasks_own_sha256(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
    tmp_path: Path,
) -> None:
    add_task_module("attaches", ATTACHES)
    path = tmp_path / "node-side.bin"
    (task_id,) = submit(
        service, "attaches", path=str(path), size=20 * MiB + 7, contents_size=5 * MiB
    )
    (task,) = wait_finished(service, [task_id], timeout=60)
    assert task.state is TaskState.SUCCEEDED, task.reason
    for filename, sha in task.results["sha"].items():
        assert downloaded_sha(service, task_id, filename) == sha
    assert path.stat().st_size == 20 * MiB + 7  # the node's file is left alone
    _, attached, _ = service.task_detail(task_id)
    assert [(a.filename, a.size, a.content_type) for a in attached] == [
        ("big.bin", 20 * MiB + 7, "application/octet-stream"),
        ("blob.bin", 5 * MiB, "application/octet-stream"),
        ("notes.txt", 6, "text/plain"),
    ]
    assert task.results["attachments"][0] == {
        "filename": "big.bin",
        "link_name": "Big",
        "size": 20 * MiB + 7,
    }


def test_two_tasks_attaching_the_same_bytes_store_them_once(
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module(
        "same",
        "def execute():\n    return {'success': True, 'attachments': "
        "[{'filename': 'same.bin', 'contents': bytes(range(256)) * 4096}]}\n",
    )
    tasks = wait_finished(service, submit(service, "same", 2))
    assert {t.state for t in tasks} == {TaskState.SUCCEEDED}
    expected = hashlib.sha256(bytes(range(256)) * 4096).hexdigest()
    assert {downloaded_sha(service, t.id, "same.bin") for t in tasks} == {expected}
    assert [p.name for p in blob_files(service)] == [expected]


def test_attachments_over_the_limit_fail_the_task_with_a_reason(
    small_limits: None,
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
    tmp_path: Path,
) -> None:
    add_task_module("attaches", ATTACHES)
    (task_id,) = submit(
        service, "attaches", path=str(tmp_path / "x.bin"), size=2 * MiB, contents_size=10
    )
    (task,) = wait_finished(service, [task_id])
    assert task.state is TaskState.FAILED
    assert "over the limit of 1 MiB ([dispatch] attachment_limit)" in task.reason
    assert service.task_detail(task_id)[1] == []


@pytest.fixture
def fast_reconnect(settings_overrides: dict) -> None:
    settings_overrides["dispatch"].update(backoff_initial=0.1, backoff_max=0.5)


FIFO_THEN_FILE = """\
import os

def execute(fifo, path, marker):
    if not os.path.exists(marker):  # the first attempt: a pipe the test feeds, then stalls
        open(marker, "w").close()
        return {"success": True, "attachments": [{"filename": "data.bin", "path": fifo}]}
    return {"success": True, "attachments": [{"filename": "data.bin", "path": path}]}
"""


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """A named pipe a thread writes 2 MiB into (once the agent opens it), then holds open
    until the test is done with it."""
    path = tmp_path / "upload.fifo"
    os.mkfifo(path)
    done = threading.Event()

    def write() -> None:
        try:
            with open(path, "wb") as fh:
                fh.write(os.urandom(2 * MiB))
                fh.flush()
                done.wait(60)
        except OSError:
            pass  # the reader went away with its node

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    yield path, done
    done.set()
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb"):
        pass  # lets a writer still waiting to open the pipe go
    writer.join(10)


def test_a_node_lost_mid_upload_leaves_no_partial_blob_and_the_retry_uploads_again(
    fast_reconnect: None,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
    tmp_path: Path,
    fifo: tuple[Path, threading.Event],
) -> None:
    add_task_module("upload", FIFO_THEN_FILE)
    data = os.urandom(3 * MiB)
    (tmp_path / "data.bin").write_bytes(data)
    (task_id,) = submit(
        service,
        "upload",
        fifo=str(fifo[0]),
        path=str(tmp_path / "data.bin"),
        marker=str(tmp_path / "first-attempt"),
    )
    wait_half_way(service, timeout=30)
    connection = dispatcher.dispatcher.nodes["local"].connection
    assert connection is not None
    os.kill(connection.agent_info["pid"], signal.SIGKILL)
    (task,) = wait_finished(service, [task_id], timeout=60)
    fifo[1].set()
    assert task.state is TaskState.SUCCEEDED, task.reason
    assert task.attempts == 2
    detail = service.record_detail("r1")
    assert [a.outcome for a in detail.attempts[task_id]] == ["lost", "succeeded"]
    expected = hashlib.sha256(data).hexdigest()
    assert downloaded_sha(service, task_id, "data.bin") == expected
    assert [p.name for p in blob_files(service)] == [expected]  # no partial blob anywhere


# ---- task modules are bytes -----------------------------------------------------------------


def test_a_latin1_module_with_a_coding_line_runs(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    project: Path,
) -> None:
    (project / "tasks" / "latin.py").write_bytes(
        b"# -*- coding: latin-1 -*-\n"
        b"def execute():\n    return {'success': True, 'word': 'caf\xe9'}\n"
    )
    (task,) = wait_finished(service, submit(service, "latin"))
    assert task.state is TaskState.SUCCEEDED, task.reason
    assert task.results["word"] == "café"


def test_a_module_that_does_not_compile_fails_naming_its_file_and_dispatching_goes_on(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    project: Path,
) -> None:
    # Latin-1 bytes without a coding line: not valid Python source, as for Python itself.
    (project / "tasks" / "undeclared.py").write_bytes(
        b"def execute():\n    return {'success': True, 'word': 'caf\xe9'}\n"
    )
    (project / "tasks" / "broken.py").write_text("def execute(:\n    pass\n")
    undeclared, broken, simple = wait_finished(
        service,
        [
            t.id
            for t in service.submit_tasks("r1", ["undeclared", "broken", "examples.simple"]).tasks
        ],
    )
    assert undeclared.state is TaskState.FAILED
    assert undeclared.reason.startswith(
        "task module undeclared (tasks/undeclared.py) does not compile"
    )
    assert "'utf-8' codec can't decode byte 0xe9" in undeclared.reason
    assert broken.state is TaskState.FAILED
    assert "(tasks/broken.py) does not compile" in broken.reason
    assert "SyntaxError" in broken.reason and "line 1" in broken.reason
    assert simple.state is TaskState.SUCCEEDED
