"""Reads that many clients repeat are made once per change, and never older than a write the
reader could know of."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient

from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.hub import EVENTS, SEQ, ChangeHub
from tests.conftest import wait_for
from tests.web.conftest import make_client


def ids(client: TestClient, **headers: str) -> list[str]:
    return [r["_id"] for r in client.get("/api/records", headers=headers).json()["records"]]


def test_a_write_through_the_server_shows_in_the_list_at_once(client: TestClient) -> None:
    assert "r400" not in ids(client)
    for n in range(5):
        made = client.post("/api/records", json={"record": {"_id": f"r40{n}"}})
        assert made.status_code == 201
        assert f"r40{n}" in ids(client)


def test_another_process_write_shows_within_the_poll_and_at_once_on_no_cache(
    seeded: Service,
) -> None:
    other = Service(seeded.settings)  # another process: its writes are not heard, only polled
    try:
        with make_client(create_app(seeded, bind_host="127.0.0.1")) as c:
            assert "r410" not in ids(c)
            other.submit_tasks("r410", ["examples.simple"])
            assert "r410" in ids(c, **{"Cache-Control": "no-cache"})
            other.submit_tasks("r411", ["examples.simple"])
            wait_for(lambda: "r411" in ids(c), timeout=5, what="the poll to see r411")
    finally:
        other.close()


def test_an_unchanged_list_answers_304_to_its_etag(client: TestClient) -> None:
    first = client.get("/api/records")
    etag = first.headers["etag"]
    assert client.get("/api/records", headers={"If-None-Match": etag}).status_code == 304
    client.post("/api/records", json={"record": {"_id": "r420"}})
    again = client.get("/api/records", headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.headers["etag"] != etag


def calls_of(service: Service, method: str) -> list[tuple[Any, ...]]:
    """The arguments of every call of `service.<method>` from now on."""
    made: list[tuple[Any, ...]] = []
    real = getattr(service, method)

    def counted(*args: Any) -> Any:
        made.append(args)
        return real(*args)

    setattr(service, method, counted)
    return made


def count_change_reads(service: Service) -> list[tuple[Any, ...]]:
    """Every read of the change feed `service` makes from now on (an event's making)."""
    return calls_of(service, "changes_since")


def test_with_a_page_open_the_list_is_read_once_per_event_not_per_poll(seeded: Service) -> None:
    other = Service(seeded.settings)  # another process: its writes are only polled
    try:
        with make_client(create_app(seeded, bind_host="127.0.0.1")) as c:
            hub = c.app.state.hub
            events = count_change_reads(seeded)
            lists = calls_of(seeded, "record_page")
            with hub.streaming():  # a page holds its event stream open
                deadline = time.monotonic() + 1.5
                n = 0
                while time.monotonic() < deadline:  # a write every poll, a reader every 10 ms
                    if n % 5 == 0:
                        other.submit_tasks(f"r44{n // 5:02d}", ["examples.simple"])
                    ids(c)
                    n += 1
                    time.sleep(0.01)
            assert len(events) >= 3, "events were made meanwhile"
            assert len(lists) <= len(events) + 2, f"{len(lists)} reads for {len(events)} events"
    finally:
        other.close()


def test_a_page_told_of_a_change_gets_a_list_that_shows_it(seeded: Service) -> None:
    other = Service(seeded.settings)
    try:
        with make_client(create_app(seeded, bind_host="127.0.0.1")) as c:
            hub = c.app.state.hub
            with hub.streaming():
                ids(c)  # kept from now on
                written = other.submit_tasks("r450", ["examples.simple"])
                assert written
                seq = other.current_seq()
                shown = False
                deadline = time.monotonic() + 5
                while not shown and time.monotonic() < deadline:
                    told = hub.event_seq >= seq  # the page would have its event by now
                    shown = "r450" in ids(c)
                    assert shown or not told, "an answer from before an event the page has"
                    time.sleep(0.005)
                assert shown, "the write shows within its event"
    finally:
        other.close()


def test_every_stream_gets_the_same_event_made_once(seeded: Service) -> None:
    hub = ChangeHub(seeded)
    made = count_change_reads(seeded)
    start = hub.event_seq
    hub.start()
    try:
        with hub.streaming():  # an open stream: events are made
            seeded.submit_tasks("r430", ["examples.simple"])
            wait_for(lambda: hub.event_seq > start, timeout=5, what="the event")
            events = [hub.events_after(start) for _ in range(50)]
            assert all(e == events[0] for e in events) and events[0]
            data = json.loads(events[0][0].text.partition(b"\ndata: ")[2])
            assert "r430" in [change["id"] for change in data["changes"]]
            assert len(made) == 1, "one read of the store for every stream"
            assert hub.events_after(start - 1) is None, "before the kept events: catch up"
    finally:
        hub.stop()


def test_a_stream_waits_for_the_next_event(seeded: Service) -> None:
    hub = ChangeHub(seeded, poll_interval=0.02, event_interval=0.02)
    hub.start()
    try:
        with hub.streaming():  # an open stream: events are made

            async def wait() -> float:
                started = time.monotonic()
                await hub.wait_event_beyond(hub.event_seq, 5)
                return time.monotonic() - started

            async def both() -> float:
                waiting = asyncio.ensure_future(wait())
                await asyncio.sleep(0.1)
                await asyncio.to_thread(seeded.submit_tasks, "r440", ["examples.simple"])
                return await waiting

            # On a thread of its own: the browser tests keep an event loop on this one.
            with ThreadPoolExecutor(1) as pool:
                assert pool.submit(asyncio.run, both()).result() < 2
    finally:
        hub.stop()


def test_a_moving_sequence_wakes_no_stream_until_an_event_is_made(seeded: Service) -> None:
    # A dispatcher's progress moves the sequence ten times a second; fifty open pages woken
    # each time would each check and sleep again, for nothing.
    hub = ChangeHub(seeded)  # not started: only what is called here moves it
    checks = {EVENTS: 0, SEQ: 0}

    def counted(kind: str, passed: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            checks[kind] += 1
            return passed()

        return check

    async def both() -> None:
        start = hub.seq
        page = asyncio.ensure_future(hub.wait(counted(EVENTS, lambda: False), 5, EVENTS))
        feed = asyncio.ensure_future(hub.wait(counted(SEQ, lambda: hub.seq > start + 3), 5))
        await asyncio.sleep(0.05)
        for step in range(1, 5):
            hub.seen(start + step)
            await asyncio.sleep(0.02)
        await feed
        assert checks == {EVENTS: 1, SEQ: 5}  # the page: its first check only
        hub.stop()
        await page

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, both()).result()


def test_a_kept_answer_is_never_served_to_a_reader_who_needs_a_token(
    seeded: Service, remote: TestClient
) -> None:
    from dirt.models import TokenScope

    token = seeded.create_token("dashboard", TokenScope.READ)
    auth = {"Authorization": f"Bearer {token}"}
    assert remote.get("/api/records", headers=auth).status_code == 200
    assert remote.get("/api/records", headers=auth).status_code == 200  # kept now
    assert remote.get("/api/records").status_code == 401


def test_a_write_that_shows_nothing_leaves_a_stream_waiting(seeded: Service) -> None:
    hub = ChangeHub(seeded, poll_interval=0.02, event_interval=0.02)
    hub.start()
    try:
        with hub.streaming():  # an open stream: events are made
            before = hub.event_seq
            seeded.submit_tasks("r450", ["examples.simple"])
            wait_for(lambda: hub.event_seq > before, timeout=5, what="its event")
            start = hub.event_seq  # where a stream stands that sent that event
            seeded.create_token("quiet")  # takes a sequence value, changes no document
            wait_for(lambda: hub.event_seq > start, timeout=5, what="the hub to pass the write")
            assert hub.events_after(start) == [], "no event to send"
            caught_up = hub.shown_through(start)
            assert caught_up == hub.event_seq

            async def wait() -> float:
                started = time.monotonic()
                await hub.wait_event_beyond(caught_up, 0.3)
                return time.monotonic() - started

            # A stream that stood still at `start` would wake at once, forever (a busy loop).
            with ThreadPoolExecutor(1) as pool:
                assert pool.submit(asyncio.run, wait()).result() >= 0.25
    finally:
        hub.stop()


def test_no_event_is_made_while_no_stream_is_open(seeded: Service) -> None:
    hub = ChangeHub(seeded, poll_interval=0.02, event_interval=0.02)
    made = count_change_reads(seeded)
    start = hub.event_seq
    hub.start()
    try:
        seeded.submit_tasks("r460", ["examples.simple"])
        wait_for(lambda: hub.event_seq > start, timeout=5, what="the hub to pass the write")
        assert made == [], "no one reads events: none is made"
        assert hub.events_after(start) is None, "a stream from before catches up from the store"
        with hub.streaming():
            seeded.submit_tasks("r461", ["examples.simple"])
            wait_for(lambda: made, timeout=5, what="an event for the open stream")
    finally:
        hub.stop()
