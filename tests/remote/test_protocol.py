"""The wire protocol module itself: framing, outcomes, signal names, the Python floor."""

from __future__ import annotations

import collections
import dataclasses
import signal
import subprocess
import sys
import time

import pytest

from dirt.dispatch.connection import Outcome
from dirt.remote import protocol
from dirt.remote.protocol import (
    BOOTSTRAP,
    OUTCOME_FIELDS,
    PYTHON_FLOOR,
    FrameDecoder,
    compiled,
    decode_outcome,
    encode,
    frame,
    outcome,
    python_too_old,
    signal_name,
    unserialisable_type,
    without_results,
)

MESSAGES = [
    (protocol.RUN, "t1", "examples.simple", "ab" * 32, "def execute():\n    pass\n", {"n": 1}, 2.5),
    (protocol.KILL, "t1"),
    (protocol.DONE, "t1", outcome(results={"success": True, "blob": b"\x00" * 300}, duration=1.0)),
    (protocol.STOP,),
    (protocol.STARTED, "t2", 4242),
    (protocol.ERROR, "é ünïcode ✓"),
]


def stream(messages: list[tuple[object, ...]]) -> bytes:
    return b"".join(encode(m) for m in messages)


# framing -----------------------------------------------------------------------------------


def test_many_frames_in_one_read_come_out_in_order() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(stream(MESSAGES)) == MESSAGES
    assert decoder.pending == 0


def test_frames_split_into_two_reads_at_every_byte_boundary() -> None:
    data = stream(MESSAGES)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert got == MESSAGES, f"split at byte {cut}"
        assert decoder.pending == 0


def test_frames_fed_one_byte_at_a_time() -> None:
    data = stream(MESSAGES)
    decoder = FrameDecoder()
    got = []
    for i in range(len(data)):
        got += decoder.feed(data[i : i + 1])
    assert got == MESSAGES


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    data = encode(MESSAGES[0])
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.pending == len(data) - 1
    assert decoder.feed(data[-1:] + data[:3]) == [MESSAGES[0]]
    assert decoder.pending == 3


def test_an_empty_read_decodes_nothing() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(encode(("x",))) == [("x",)]


def test_decoding_is_linear_in_the_bytes_fed() -> None:
    # 64 MiB in 16 KiB reads: a decoder that copies its whole buffer on every read (the old
    # `buffer += chunk` on bytes) moves ~140 GB here; a linear one moves ~64 MiB.
    big = b"\xab" * (64 << 20)
    data = encode((protocol.DONE, "big", big)) + encode((protocol.STOP,))
    decoder = FrameDecoder()
    got = []
    started = time.perf_counter()
    for i in range(0, len(data), 16 << 10):
        got += decoder.feed(data[i : i + (16 << 10)])
    elapsed = time.perf_counter() - started
    assert [m[0] for m in got] == [protocol.DONE, protocol.STOP]
    assert got[0][2] == big
    assert elapsed < 10, f"decoding 64 MiB took {elapsed:.1f}s"


def test_bootstrap_runs_the_first_frame_and_leaves_the_rest_on_stdin() -> None:
    source = "import os, sys\nsys.stdout.write(repr(os.read(0, 100)))\n"
    done = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP],
        input=frame(compiled(source, "<test>")) + b"next frame",
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"b'next frame'"


def test_bootstrap_without_a_source_says_so() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP], input=b"\x00\x00", capture_output=True, timeout=30
    )
    assert done.returncode == 1
    assert b"no source on stdin" in done.stderr


# outcomes ----------------------------------------------------------------------------------


def test_outcome_parameters_are_the_wire_fields_in_order() -> None:
    wire = outcome(**{name: index for index, name in enumerate(OUTCOME_FIELDS)})
    assert wire == tuple(range(len(OUTCOME_FIELDS)))


def test_outcome_defaults() -> None:
    # The output field is the last piece of output, bytes (the rest came in OUTPUT chunks).
    assert outcome() == (None, None, None, None, False, False, 0.0, b"")


def test_master_outcome_has_the_wire_fields_in_order() -> None:
    names = [f.name for f in dataclasses.fields(Outcome)]
    assert names == ["task_id", *OUTCOME_FIELDS, "received"]


def test_outcome_round_trip_through_the_master() -> None:
    wire = outcome(results={"success": True}, exit_code=0, duration=0.5, output="hi\n")
    got = Outcome.from_wire("t9", wire)
    assert got.task_id == "t9"
    assert (got.results, got.exit_code, got.duration, got.output) == (
        {"success": True},
        0,
        0.5,
        "hi\n",
    )
    assert (got.error, got.signal, got.timed_out, got.killed) == (None, None, False, False)


def test_decoding_normalises_missing_and_dict_outcomes() -> None:
    assert decode_outcome([None, "boom", None, 9, 1, 0, None, None]) == (
        None,
        "boom",
        None,
        9,
        True,
        False,
        0.0,
        b"",
    )
    assert decode_outcome({"error": "x", "timed_out": True}) == outcome(error="x", timed_out=True)


def test_an_outcome_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="8 fields, not 3"):
        decode_outcome((1, 2, 3))


def test_without_results_keeps_the_rest() -> None:
    wire = outcome(results={"x": {1}}, exit_code=0, duration=2.0, output="out")
    assert without_results(wire, "results not serialisable: set") == outcome(
        error="results not serialisable: set", exit_code=0, duration=2.0, output="out"
    )


def test_unserialisable_type_names_the_first_foreign_type() -> None:
    point = collections.namedtuple("Point", "x y")
    assert unserialisable_type({"a": [1, 2.0, "s", b"b", None, True, (3,)]}) is None
    assert unserialisable_type({"a": [{"b": {1, 2}}]}) == "set"
    assert unserialisable_type([point(1, 2)]) == "Point"
    assert unserialisable_type({(1, 2): "tuple keys are plain"}) is None


# signal names and the floor ----------------------------------------------------------------


def test_signal_names() -> None:
    assert signal_name(signal.SIGKILL) == "SIGKILL"
    assert signal_name(signal.SIGTERM) == "SIGTERM"
    assert signal_name(signal.SIGRTMIN + 2) == "SIGRTMIN+2"
    assert signal_name(1000) == "unknown signal"


def test_python_floor_check() -> None:
    floor = ".".join(map(str, PYTHON_FLOOR))
    older = (PYTHON_FLOOR[0], PYTHON_FLOOR[1] - 1)
    assert python_too_old("python3", PYTHON_FLOOR) is None
    assert python_too_old("python3", (3, 13, 1)) is None
    assert python_too_old("python3", older) == (
        f"Python too old: python3 is {older[0]}.{older[1]}, the agent needs {floor} or newer"
    )


def test_the_floor_is_3_9() -> None:
    # os.waitstatus_to_exitcode (the fork server) is 3.9+; lowering the floor means replacing it.
    assert PYTHON_FLOOR == (3, 9)
