"""Output and attachments streaming from a node over a real gateway, in both isolation modes:
output while the task runs, within its limit; attachments by path and by contents into the blob
store; chunks of different tasks taking turns; limits; uploads cut short."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dirt.blobs import BlobStore, BlobWriter
from dirt.dispatch.incoming import Limits

if TYPE_CHECKING:
    # The conftest here and tests/conftest.py share a module name: import for types only.
    from conftest import Node

MiB = 1 << 20

PRINTS_SLOWLY = """
import sys, time

def execute(lines, pause):
    for i in range(lines):
        print(f"line {i}", flush=True)
        time.sleep(pause)
    return {"success": True}
"""

PRINTS_A_LOT = """
def execute(mib):
    line = "x" * 1023 + "\\n"
    for i in range(mib * 1024):
        print(line, end="")
    print("THE END")
    return {"success": True}
"""

ATTACHES = """
import hashlib, os

def execute(path=None, size=0, contents_size=0):
    items, shas = [], {}
    if path:
        data = os.urandom(size)
        with open(path, "wb") as fh:
            fh.write(data)
        items.append({"filename": "by-path.bin", "path": path, "link_name": "By path"})
        shas["by-path.bin"] = hashlib.sha256(data).hexdigest()
    if contents_size:
        data = os.urandom(contents_size)
        items.append({"filename": "by-contents.bin", "contents": data})
        shas["by-contents.bin"] = hashlib.sha256(data).hexdigest()
    return {"success": True, "shas": shas, "attachments": items}
"""


@pytest.fixture(params=["process", "thread"])
def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def stored(blobs: BlobStore, results: dict) -> dict[str, tuple[str, int]]:
    """filename -> (sha256, size) of each attachment the connection stored."""
    found = {}
    for item in results["attachments"]:
        blob = item["blob"]
        with blobs.open(blob["sha256"]) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == blob["sha256"]
        found[item["filename"]] = (blob["sha256"], blob["size"])
    return found


def test_output_reaches_the_master_while_the_task_runs(
    make_node: Callable[..., Node], isolation: str
) -> None:
    node = make_node(isolation, streams=True)
    task_id = node.start(PRINTS_SLOWLY, {"lines": 4, "pause": 0.6})
    outcome = node.wait(task_id)
    chunks = node.collector.output[task_id]
    assert outcome.error is None
    assert node.collector.output_of(task_id) == b"".join(f"line {i}\n".encode() for i in range(4))
    # Lines printed 0.6 s apart came in chunks of their own, the first well before the end.
    assert len(chunks) >= 3
    assert chunks[0][1].startswith(b"line 0\n")
    assert node.collector.done_at[task_id] - chunks[0][2] > 1.0
    assert outcome.output == "line 0\nline 1\nline 2\nline 3\n"


def test_output_never_flushed_still_reaches_the_master_while_the_task_runs(
    make_node: Callable[..., Node], isolation: str
) -> None:
    node = make_node(isolation, streams=True)
    source = PRINTS_SLOWLY.replace(", flush=True", "")
    task_id = node.start(source, {"lines": 5, "pause": 0.5})
    outcome = node.wait(task_id)
    chunks = node.collector.output[task_id]
    assert outcome.error is None
    assert node.collector.output_of(task_id) == b"".join(f"line {i}\n".encode() for i in range(5))
    assert chunks[0][1].startswith(b"line 0\n")
    assert node.collector.done_at[task_id] - chunks[0][2] > 1.0


def test_output_over_the_limit_keeps_head_and_tail_and_does_not_slow_the_task(
    make_node: Callable[..., Node], isolation: str
) -> None:
    node = make_node(isolation, streams=True, limits=Limits(output=2 * MiB))
    started = time.monotonic()
    outcome = node.run(PRINTS_A_LOT, {"mib": 64})
    took = time.monotonic() - started
    assert outcome.error is None
    chunks = node.collector.output[outcome.task_id]
    received = sum(len(data) for _, data, _ in chunks)
    assert received <= 2 * MiB + CHUNK_SLACK  # not 64 MiB: the rest never left the node
    assert chunks[0][0] == 0
    head = b"".join(data for offset, data, _ in chunks if offset < MiB)
    assert head.startswith(b"x" * 1023 + b"\n")
    tail_start = max(offset for offset, _, _ in chunks if offset >= MiB)
    assert tail_start > MiB
    assert node.collector.output_of(outcome.task_id).endswith(b"THE END\n")
    assert outcome.output.endswith("THE END\n")
    assert took < 60


CHUNK_SLACK = 256 * 1024


def test_an_attachment_by_path_is_streamed_and_the_file_left_alone(
    make_node: Callable[..., Node], isolation: str, blobs: BlobStore, tmp_path: Path
) -> None:
    node = make_node(isolation, streams=True)
    path = tmp_path / "made-by-the-task.bin"
    outcome = node.run(ATTACHES, {"path": str(path), "size": 5 * MiB + 123})
    assert outcome.error is None, outcome.error
    sha, size = stored(blobs, outcome.results)["by-path.bin"]
    assert sha == outcome.results["shas"]["by-path.bin"]
    assert size == 5 * MiB + 123
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha  # still there, unchanged
    item = outcome.results["attachments"][0]
    assert (item["filename"], item["link_name"]) == ("by-path.bin", "By path")


def test_big_contents_travel_in_chunks_and_small_ones_in_the_results(
    make_node: Callable[..., Node], isolation: str, blobs: BlobStore
) -> None:
    node = make_node(isolation, streams=True)
    outcome = node.run(ATTACHES, {"contents_size": 3 * MiB})
    assert outcome.error is None, outcome.error
    sha, size = stored(blobs, outcome.results)["by-contents.bin"]
    assert (sha, size) == (outcome.results["shas"]["by-contents.bin"], 3 * MiB)
    small = node.run(
        "def execute():\n    return {'success': True, "
        "'attachments': [{'filename': 'a.txt', 'contents': 'hello'}]}\n"
    )
    ((sha, size),) = stored(blobs, small.results).values()
    assert (sha, size) == (hashlib.sha256(b"hello").hexdigest(), 5)
    assert small.results["attachments"][0]["blob"]["text"] is True


def test_the_same_content_is_stored_once(
    make_node: Callable[..., Node], blobs: BlobStore, tmp_path: Path
) -> None:
    node = make_node("process", streams=True)
    data = os.urandom(2 * MiB)
    (tmp_path / "same.bin").write_bytes(data)
    source = (
        "def execute(path):\n    return {'success': True, "
        "'attachments': [{'filename': 'f', 'path': path}]}\n"
    )
    first = node.run(source, {"path": str(tmp_path / "same.bin")})
    second = node.run(source, {"path": str(tmp_path / "same.bin")})
    assert stored(blobs, first.results) == stored(blobs, second.results)
    files = [p for p in blobs.root.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [hashlib.sha256(data).hexdigest()]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"path": "/nonexistent/x.bin"}, "cannot read /nonexistent/x.bin"),
        ({"contents_size": 3 * MiB}, "over the limit of 2 MiB ([dispatch] attachment_limit)"),
    ],
)
def test_attachments_that_cannot_be_sent_fail_the_task_with_a_reason(
    make_node: Callable[..., Node], isolation: str, kwargs: dict, reason: str, blobs: BlobStore
) -> None:
    node = make_node(isolation, streams=True, limits=Limits(attachments=2 * MiB))
    source = (
        "import os\ndef execute(path=None, contents_size=0):\n"
        "    items = [{'filename': 'x', 'path': path}] if path else "
        "[{'filename': 'x', 'contents': os.urandom(contents_size)}]\n"
        "    return {'success': True, 'attachments': items}\n"
    )
    outcome = node.run(source, kwargs)
    assert outcome.results is None
    assert reason in outcome.error
    assert not [p for p in blobs.root.rglob("*") if p.is_file()]


class SlowBlobs(BlobStore):
    """A blob store on a slow disk: each chunk the master writes takes `pause` seconds, so the
    node's link stays full for as long as an upload lasts."""

    def __init__(self, root: Path, pause: float) -> None:
        super().__init__(root)
        self.pause = pause

    def writer(self) -> BlobWriter:
        writer = super().writer()
        write = writer.write

        def slow_write(data: bytes | memoryview) -> None:
            time.sleep(self.pause)
            write(data)

        writer.write = slow_write  # type: ignore[method-assign]
        return writer


def uploading(root: Path, at_least: int = MiB) -> bool:
    """An upload in `root`'s tmp/ has at least `at_least` bytes."""
    parts = list((root / "tmp").glob("*.part")) if (root / "tmp").exists() else []
    return any(p.stat().st_size >= at_least for p in parts)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.005)


QUICK = "def execute():\n    return {'success': True}\n"


def test_a_big_upload_does_not_hold_up_the_other_tasks_on_the_node(
    make_node: Callable[..., Node], isolation: str, tmp_path: Path
) -> None:
    # The master stores 1 MiB per 20 ms: the 64 MiB upload keeps the link full for over a second.
    blobs = SlowBlobs(tmp_path / "slow-blobs", pause=0.02)
    node = make_node(isolation, streams=True, blobs=blobs)
    big = node.start(ATTACHES, {"path": str(tmp_path / "big.bin"), "size": 64 * MiB})
    wait_until(lambda: uploading(blobs.root), "the upload to begin")
    quick = [node.start(QUICK) for _ in range(10)]
    for task_id in quick:
        assert node.wait(task_id).error is None
    # Each quick outcome waited for at most a chunk or two of the upload, not for all of it.
    assert big not in node.collector.outcomes
    assert uploading(blobs.root, 2 * MiB)
    outcome = node.wait(big, timeout=120)
    assert outcome.error is None
    assert (
        stored(blobs, outcome.results)["by-path.bin"][0] == outcome.results["shas"]["by-path.bin"]
    )


def test_a_file_that_reads_slowly_does_not_hold_up_the_other_tasks_on_the_node(
    make_node: Callable[..., Node], isolation: str, blobs: BlobStore, tmp_path: Path
) -> None:
    node = make_node(isolation, streams=True)
    fifo = tmp_path / "slow.fifo"
    os.mkfifo(fifo)
    source = (
        "def execute(path):\n    return {'success': True, "
        "'attachments': [{'filename': 'slow.bin', 'path': path}]}\n"
    )
    slow = node.start(source, {"path": str(fifo)})
    data = os.urandom(3 * MiB)
    # The node reads the pipe as its writer feeds it: 1 MiB, then nothing until the quick
    # tasks are done (a network file system having a bad minute, say).
    with open(fifo, "wb") as writer:
        writer.write(data[:MiB])
        writer.flush()
        wait_until(lambda: uploading(blobs.root, 1), "the upload to begin")
        quick = [node.start(QUICK) for _ in range(5)]
        for task_id in quick:
            assert node.wait(task_id).error is None
        assert slow not in node.collector.outcomes
        writer.write(data[MiB:])
    outcome = node.wait(slow)
    assert outcome.error is None
    assert stored(blobs, outcome.results)["slow.bin"] == (hashlib.sha256(data).hexdigest(), 3 * MiB)


def test_a_lost_node_leaves_no_partial_blob(
    make_node: Callable[..., Node], blobs: BlobStore, tmp_path: Path
) -> None:
    node = make_node("process", streams=True)
    fifo = tmp_path / "slow.fifo"
    os.mkfifo(fifo)
    task_id = node.start(
        "def execute(path):\n    return {'success': True, "
        "'attachments': [{'filename': 'slow.bin', 'path': path}]}\n",
        {"path": str(fifo)},
    )
    # The agent reads the FIFO as the upload's turn comes; we write 2 MiB and no more.
    with open(fifo, "wb") as writer:
        writer.write(os.urandom(2 * MiB))
        writer.flush()
        deadline = time.monotonic() + 30
        while True:
            parts = (
                list((blobs.root / "tmp").glob("*.part")) if (blobs.root / "tmp").exists() else []
            )
            if parts and parts[0].stat().st_size >= MiB:
                break
            assert time.monotonic() < deadline, "the upload never began"
            time.sleep(0.01)
        gateway = node.conn.agent_info["pid"]
        os.kill(gateway, signal.SIGKILL)
        task_ids, _ = node.collector.wait_lost()
    assert task_ids == [task_id]
    assert task_id not in node.collector.outcomes
    assert [p for p in blobs.root.rglob("*") if p.is_file()] == []


def test_a_slow_master_keeps_the_agent_small(make_node: Callable[..., Node]) -> None:
    node = make_node("process", streams=True, limits=Limits(output=256 * MiB))
    node.collector.output_delay = 0.02  # the master taking its time over every chunk
    outcome = node.wait(node.start(PRINTS_A_LOT, {"mib": 96}), timeout=60)
    assert outcome.error is None
    assert len(node.collector.output_of(outcome.task_id)) == 96 * MiB + len(b"THE END\n")
    status = Path(f"/proc/{node.conn.agent_info['pid']}/status").read_text()
    peak_kib = int(
        next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
    )
    assert peak_kib < 64 * 1024, f"agent peaked at {peak_kib} KiB while 96 MiB went through it"
