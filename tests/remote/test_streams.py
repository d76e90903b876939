"""The node's streaming parts on their own: a task's output kept within its limit and cut into
chunks, its attachments sized and checked, and the fair queue that interleaves tasks."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest

from dirt.remote.protocol import CHUNK_SIZE
from dirt.remote.streams import (
    FLUSH_AFTER,
    INLINE_LIMIT,
    LIVE_TAIL,
    TAIL_EVERY,
    AttachmentError,
    FairQueue,
    OutputBuffer,
    prepare_attachments,
)

MiB = 1 << 20


def joined(chunks: list[tuple[int, bytes]]) -> bytes:
    return b"".join(data for _, data in chunks)


def contiguous(chunks: list[tuple[int, bytes]], start: int = 0) -> bool:
    for offset, data in chunks:
        if offset != start:
            return False
        start += len(data)
    return True


# the output buffer ----------------------------------------------------------------------------


def test_output_waits_for_its_time_then_goes_whole() -> None:
    buffer = OutputBuffer(16 * MiB)
    buffer.feed(b"line 1\n", 100.0)
    assert buffer.take(100.0) == []
    assert buffer.due_at() == 100.0 + FLUSH_AFTER
    buffer.feed(b"line 2\n", 100.1)
    assert buffer.take(100.0 + FLUSH_AFTER) == [(0, b"line 1\nline 2\n")]
    assert buffer.pending == 0 and buffer.due_at() is None


def test_a_full_chunk_of_output_goes_at_once_in_chunks_of_at_most_a_mib() -> None:
    buffer = OutputBuffer(64 * MiB)
    data = os.urandom(CHUNK_SIZE * 2 + 5)
    for i in range(0, len(data), 64 * 1024):
        buffer.feed(data[i : i + 64 * 1024], 0.0)
    chunks = buffer.take(0.0)
    assert [len(c) for _, c in chunks] == [CHUNK_SIZE, CHUNK_SIZE]
    assert contiguous(chunks)
    assert buffer.take(FLUSH_AFTER) == [(2 * CHUNK_SIZE, data[-5:])]


def test_beyond_the_limit_the_head_and_the_newest_tail_are_kept() -> None:
    limit = 2 * MiB
    buffer = OutputBuffer(limit)
    data = bytes(i % 251 for i in range(20 * MiB))
    sent: list[tuple[int, bytes]] = []
    now = 0.0
    for i in range(0, len(data), 256 * 1024):
        buffer.feed(data[i : i + 256 * 1024], now)
        sent += buffer.take(now)
        now += 0.01
    chunks, last = buffer.final()
    sent += chunks
    head = [(o, d) for o, d in sent if o < limit // 2]
    assert joined(head) == data[: limit // 2]
    tail_start = sent[len(head)][0]
    assert tail_start > limit // 2  # a gap: what was dropped never left the node
    assert joined(sent[len(head) :]) + last == data[tail_start:]
    assert len(data) - tail_start >= limit // 2  # at least the limit's tail is kept
    # What left the node is bounded by the limit (plus one read's worth), whatever was printed.
    assert sum(len(d) for _, d in sent) + len(last) <= limit + 256 * 1024


def test_beyond_the_head_output_is_sent_every_second_not_as_it_comes() -> None:
    buffer = OutputBuffer(256 * 1024)
    buffer.feed(b"x" * 200_000, 0.0)
    assert buffer.take(0.1) == [(0, b"x" * 128 * 1024)]  # the head: complete, so at once
    buffer.feed(b"y" * 1000, 0.2)
    assert buffer.take(0.3) == []
    assert buffer.due_at() == pytest.approx(0.0 + TAIL_EVERY)
    (chunk,) = buffer.take(TAIL_EVERY)
    assert chunk[1].endswith(b"y" * 1000)


def test_while_the_task_runs_at_most_a_chunk_of_the_newest_output_goes_each_second() -> None:
    buffer = OutputBuffer(16 * MiB)
    buffer.feed(b"h" * 8 * MiB, 0.0)  # the head, complete
    assert joined(buffer.take(0.0)) == b"h" * 8 * MiB
    for second in range(1, 4):  # 3 MiB a second beyond the head
        buffer.feed(bytes([second]) * 3 * MiB, second - 0.5)
        (chunk,) = buffer.take(second + 0.5)
        offset, data = chunk
        assert (offset, len(data)) == (8 * MiB + second * 3 * MiB - LIVE_TAIL, LIVE_TAIL)
        assert data == bytes([second]) * LIVE_TAIL  # the newest
        assert buffer.take(second + 0.6) == []  # nothing new: nothing goes


def test_when_the_task_ends_what_the_tail_holds_and_did_not_go_follows_without_overlap() -> None:
    limit = 8 * MiB
    buffer = OutputBuffer(limit)
    data = os.urandom(40 * MiB)
    sent: list[tuple[int, bytes]] = []
    now = 0.0
    for i in range(0, len(data), 256 * 1024):  # 2.5 MiB a second
        buffer.feed(data[i : i + 256 * 1024], now)
        sent += buffer.take(now)
        now += 0.1
    chunks, last = buffer.final()
    sent += chunks
    if last:  # the master puts it after the newest byte it got (dispatch.incoming)
        sent.append((max(o + len(d) for o, d in sent), last))
    assert joined([c for c in sent if c[0] < limit // 2]) == data[: limit // 2]
    live = [c for c in sent[: -len(chunks) or None] if c[0] >= limit // 2]
    assert live, "the newest output went while the task ran"
    spans = sorted((o, o + len(d)) for o, d in sent)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "chunks overlap"
    # The whole tail is there, pieced together from what went live and what followed.
    tail_start = len(data) - limit // 2
    kept = sorted((o, d) for o, d in sent if o + len(d) > tail_start)
    assert kept[0][0] <= tail_start
    assert all(o + len(d) == n for (o, d), (n, _) in itertools.pairwise(kept)), "a gap"
    assert b"".join(d for _, d in kept)[tail_start - kept[0][0] :] == data[tail_start:]
    assert sum(len(d) for _, d in sent) <= limit + len(live) * LIVE_TAIL


def test_the_last_piece_rides_with_the_outcome_only_when_it_follows_without_a_gap() -> None:
    quiet = OutputBuffer(MiB)
    quiet.feed(b"done\n", 0.0)
    assert quiet.final() == ([], b"done\n")

    noisy = OutputBuffer(256 * 1024)
    noisy.feed(b"a" * 128 * 1024, 0.0)
    noisy.take(1.0)
    noisy.feed(b"b" * 500 * 1024, 1.0)  # mostly dropped: a gap before what is kept
    chunks, last = noisy.final()
    assert last == b""
    assert chunks[0][0] > 128 * 1024


def test_feeding_is_linear_in_the_bytes() -> None:
    buffer = OutputBuffer(16 * MiB)
    piece = b"z" * 4096
    started = time.perf_counter()
    for i in range(64 * 1024):  # 256 MiB in 4 KiB writes
        buffer.feed(piece, i * 1e-4)
        if i % 256 == 0:
            buffer.take(i * 1e-4)
    assert time.perf_counter() - started < 20


# attachments ----------------------------------------------------------------------------------


def test_small_contents_stay_in_the_results_big_ones_go_apart() -> None:
    big = os.urandom(INLINE_LIMIT + 1)
    results, contents = prepare_attachments(
        {
            "success": True,
            "attachments": [
                {"filename": "a.txt", "contents": "small"},
                {"filename": "b.bin", "contents": big, "link_name": "B"},
            ],
        },
        10 * MiB,
    )
    first, second = results["attachments"]
    assert first == {"filename": "a.txt", "contents": "small"}
    assert second == {"filename": "b.bin", "link_name": "B", "stream": 1, "text": False}
    assert contents == {1: big}


def test_a_path_is_made_absolute_and_sized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "log.txt").write_bytes(b"x" * 1000)
    monkeypatch.chdir(tmp_path)
    results, contents = prepare_attachments(
        {"success": True, "attachments": [{"filename": "log.txt", "path": "log.txt"}]}, MiB
    )
    assert results["attachments"] == [
        {"filename": "log.txt", "path": str(tmp_path / "log.txt"), "size": 1000}
    ]
    assert contents == {}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"filename": "gone", "path": "/nonexistent/gone"}, "cannot read /nonexistent/gone"),
        ({"filename": "dir", "path": "/"}, "/ is a directory"),
        ({"filename": "n", "path": 7}, "'path' must be a string"),
    ],
)
def test_a_path_that_cannot_be_read_is_refused_with_its_name(
    item: dict[str, object], message: str
) -> None:
    with pytest.raises(AttachmentError, match=message):
        prepare_attachments({"success": True, "attachments": [item]}, MiB)


def test_attachments_over_the_limit_are_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 600)
    items = [
        {"filename": "f", "path": str(tmp_path / "f")},
        {"filename": "g", "contents": "y" * 500},
    ]
    with pytest.raises(AttachmentError, match=r"total 1.1 KiB, over the limit of 1000 bytes"):
        prepare_attachments({"success": True, "attachments": items}, 1000)


def test_results_without_attachments_are_left_as_they_are() -> None:
    for results in ({"success": True}, [1, 2], None, {"success": True, "attachments": "x"}):
        assert prepare_attachments(results, 0) == (results, {})


# the fair queue -------------------------------------------------------------------------------


def drain(queue: FairQueue) -> list[object]:
    taken = []
    while queue:
        taken.append(queue.take()[0])
    return taken


def test_tasks_take_turns_one_message_at_a_time_in_their_own_order() -> None:
    queue = FairQueue()
    for i in range(4):
        queue.put(f"big{i}", "big", 100)
    queue.put("quick-done", "quick")
    assert queue.size == 400
    assert drain(queue) == ["big0", "quick-done", "big1", "big2", "big3"]
    assert queue.size == 0


def test_messages_of_no_task_go_first() -> None:
    queue = FairQueue()
    queue.put("a0", "a")
    queue.put("load", None)
    assert drain(queue) == ["load", "a0"]
