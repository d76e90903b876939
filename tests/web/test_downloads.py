"""Attachments and output over HTTP: downloads streamed with Range support, the progressive
output text with its headers, and the live output events."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from dirt.models import Attachment, OutputChunk
from dirt.service import Service
from dirt.web.run import WebServer
from tests.web.conftest import finish_task, run_task

ATTACH_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc9858"
URL = f"/api/tasks/{ATTACH_R123}/attachments/data.bin"
OUTPUT = f"/api/tasks/{ATTACH_R123}/output"
DATA = os.urandom(12 * (1 << 20) + 13)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def attached(seeded: Service, node: str) -> bytes:
    run_task(seeded, ATTACH_R123, node)
    now = time.time()
    attachment = Attachment(
        ATTACH_R123, "data.bin", "Data", "application/octet-stream", 0, DATA, now
    )
    finish_task(seeded, ATTACH_R123, node, attachments=[attachment])
    return DATA


def test_a_download_streams_the_whole_file_with_its_sha256_as_etag(
    client: TestClient, attached: bytes
) -> None:
    response = client.get(URL)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == SHA
    assert response.headers["etag"] == f'"{SHA}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["content-disposition"].startswith("attachment;")


@pytest.mark.parametrize(
    ("asked", "first", "last"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=1048570-", 1048570, len(DATA) - 1),
        ("bytes=-5", len(DATA) - 5, len(DATA) - 1),
        ("bytes=0-999999999999", 0, len(DATA) - 1),
    ],
)
def test_a_range_is_answered_with_206_and_just_those_bytes(
    client: TestClient, attached: bytes, asked: str, first: int, last: int
) -> None:
    response = client.get(URL, headers={"Range": asked})
    assert response.status_code == 206
    assert response.content == DATA[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert response.headers["content-length"] == str(last - first + 1)


def test_a_range_past_the_end_is_a_416(client: TestClient, attached: bytes) -> None:
    response = client.get(URL, headers={"Range": f"bytes={len(DATA)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("asked", ["bytes=0-1,5-9", "lines=1-2", "bytes=9-2", "bytes=x-"])
def test_a_range_not_served_as_one_part_gets_the_whole_file(
    client: TestClient, attached: bytes, asked: str
) -> None:
    response = client.get(URL, headers={"Range": asked})
    assert response.status_code == 200
    assert len(response.content) == len(DATA)


def test_if_range_resumes_only_the_same_contents(client: TestClient, attached: bytes) -> None:
    same = client.get(URL, headers={"Range": "bytes=100-199", "If-Range": f'"{SHA}"'})
    assert same.status_code == 206 and same.content == DATA[100:200]
    other = client.get(URL, headers={"Range": "bytes=100-199", "If-Range": '"0000"'})
    assert other.status_code == 200 and len(other.content) == len(DATA)


def test_a_missing_attachment_is_a_404(client: TestClient, attached: bytes) -> None:
    response = client.get(f"/api/tasks/{ATTACH_R123}/attachments/nope.bin")
    assert response.status_code == 404
    assert "no attachment 'nope.bin'" in response.json()["error"]


# ---- output ---------------------------------------------------------------------------------


def add_output(service: Service, *pieces: tuple[int, bytes]) -> None:
    service.dispatch([], [], [], [OutputChunk(ATTACH_R123, 1, s, d) for s, d in pieces])


def test_output_is_served_from_an_offset_with_progressive_text_headers(
    client: TestClient, seeded: Service, node: str
) -> None:
    waiting = client.get(OUTPUT)
    assert (waiting.status_code, waiting.content) == (200, b"")
    assert waiting.headers["x-more-data"] == "true"
    assert waiting.headers["x-attempt"] == "0"
    run_task(seeded, ATTACH_R123, node)
    add_output(seeded, (0, b"compiling\n"), (10, b"linking\n"))
    running = client.get(OUTPUT)
    assert running.content == b"compiling\nlinking\n"
    assert running.headers["content-type"] == "text/plain; charset=utf-8"
    assert (running.headers["x-next-offset"], running.headers["x-more-data"]) == ("18", "true")
    assert running.headers["x-attempt"] == "1"
    assert client.get(OUTPUT, params={"offset": 10}).content == b"linking\n"
    add_output(seeded, (18, b"done\n"))
    finish_task(seeded, ATTACH_R123, node)
    done = client.get(OUTPUT, params={"offset": 18})
    assert (done.content, done.headers["x-next-offset"]) == (b"done\n", "23")
    assert done.headers["x-more-data"] == "false"


def test_output_of_an_attempt_that_does_not_exist_is_a_404(
    client: TestClient, seeded: Service, node: str
) -> None:
    assert client.get(OUTPUT, params={"attempt": 3}).status_code == 404
    assert client.get("/api/tasks/nope/output").status_code == 404


def test_big_output_is_served_whole_in_one_response(
    client: TestClient, seeded: Service, node: str
) -> None:
    run_task(seeded, ATTACH_R123, node)
    pieces = [(i << 20, bytes([65 + i]) * (1 << 20)) for i in range(6)]
    add_output(seeded, *pieces)
    response = client.get(OUTPUT)
    assert response.content == b"".join(d for _, d in pieces)
    assert response.headers["x-next-offset"] == str(6 << 20)


def events(lines: list[str]) -> list[tuple[str, Any]]:
    found, kind = [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: ") and kind:
            found.append((kind, json.loads(line[len("data: ") :])))
    return found


def test_live_output_events_arrive_as_output_is_stored_and_end_with_the_task(
    seeded: Service, node: str, live_server: WebServer
) -> None:
    run_task(seeded, ATTACH_R123, node)
    add_output(seeded, (0, "héllo\n".encode()))
    seen: list[str] = []
    reader_done = threading.Event()

    def read() -> None:
        url = f"{live_server.url}api/tasks/{ATTACH_R123}/output/events"
        with httpx.stream("GET", url, timeout=20) as response:
            for line in response.iter_lines():
                seen.append(line)
                if line.startswith("data: ") and seen[-2:-1] == ["event: end"]:
                    break
        reader_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while "event: output" not in seen:
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)
    # A multi-byte character split between two chunks arrives whole.
    euro = "€".encode()
    add_output(seeded, (7, b"step 2 " + euro[:1]), (15, euro[1:] + b"\n"))
    finish_task(seeded, ATTACH_R123, node)
    assert reader_done.wait(10), seen
    got = events(seen)
    assert "".join(data["text"] for kind, data in got if kind == "output") == "héllo\nstep 2 €\n"
    assert got[-1] == ("end", {"state": "succeeded", "offset": 18})
