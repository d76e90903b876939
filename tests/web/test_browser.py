"""The pages in headless Chromium (Debian's), driven by Playwright, against a real server."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dirt.models import Attachment, TaskState
from dirt.service import Service
from dirt.web.run import WebServer
from tests.web.conftest import finish_task, run_task

pytestmark = pytest.mark.browser

SIMPLE_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc95a4"
ATTACH_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc9858"


def expect(page: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect


def test_overview_shows_records_and_bars(
    seeded: Service,
    node: str,
    live_server: WebServer,
    page: Any,
    screenshot: Callable[[str], None],
) -> None:
    run_task(seeded, SIMPLE_R123, node)
    finish_task(seeded, SIMPLE_R123, node)
    page.goto(live_server.url)
    rows = page.locator("table.records tbody tr")
    expect(page)(rows).to_have_count(2)
    expect(page)(rows.nth(0)).to_contain_text("r124")
    bar = page.locator('tr[data-record="r123"] svg.bar')
    expect(page)(bar.locator("rect.s-succeeded")).to_have_count(1)
    expect(page)(bar.locator("rect.s-waiting")).to_have_count(1)
    assert "1 succeeded, 1 waiting" in bar.locator("title").first.text_content()
    expect(page)(page.locator(".legend").first).to_contain_text("failed")
    # Times are shown in the viewer's zone (the browser runs in Europe/Berlin): 2011-09-06
    # 22:16:25 UTC is 2011-09-07 00:16:25 there.
    expect(page)(page.locator('tr[data-record="r123"] time')).to_have_text("2011-09-07 00:16:25")
    screenshot("overview")


def test_a_finishing_task_updates_the_open_page_without_reload(
    seeded: Service,
    node: str,
    live_server: WebServer,
    page: Any,
    screenshot: Callable[[str], None],
) -> None:
    other = Service(seeded.settings)  # as if the dispatcher were another process
    try:
        page.goto(live_server.url + "records/r123")
        expect(page)(page.locator("#live-status.on")).to_be_visible()
        page.evaluate("window.__notReloaded = true")
        row = page.locator(f"#task-{SIMPLE_R123}")
        expect(page)(row.locator("span.state")).to_have_text("waiting")
        run_task(other, SIMPLE_R123, node)
        expect(page)(row.locator("span.state")).to_have_text("running", timeout=3000)
        started = time.monotonic()
        finish_task(other, SIMPLE_R123, node, results={"success": True, "answer": 42})
        expect(page)(row.locator("span.state")).to_have_text("succeeded", timeout=3000)
        assert time.monotonic() - started < 1.5
        assert page.evaluate("window.__notReloaded") is True
        screenshot("record-live")
        # A new record reaches the overview the same way.
        page.goto(live_server.url)
        page.evaluate("window.__notReloaded = true")
        other.submit(
            [
                {
                    "_id": "r999",
                    "type": "record",
                    "description": "arrived live",
                    "created": time.time(),
                }
            ]
        )
        expect(page)(page.locator("table.records tbody tr").first).to_contain_text(
            "r999", timeout=3000
        )
        assert page.evaluate("window.__notReloaded") is True
    finally:
        other.close()


def test_click_through_overview_record_history_and_back(
    seeded: Service,
    node: str,
    live_server: WebServer,
    page: Any,
    screenshot: Callable[[str], None],
) -> None:
    run_task(seeded, SIMPLE_R123, node)
    finish_task(seeded, SIMPLE_R123, node, TaskState.FAILED, reason="Traceback...\nValueError")
    page.goto(live_server.url)
    page.get_by_role("link", name="r123", exact=True).click()
    expect(page)(page).to_have_url(re.compile(r"/records/r123$"))
    expect(page)(page.locator("h1")).to_contain_text("r123")
    screenshot("record")
    page.locator(f"#task-{SIMPLE_R123} td.name a").click()
    expect(page)(page).to_have_url(re.compile(r"/tasks/examples\.simple$"))
    expect(page)(page.locator("svg.chart rect")).to_have_count(2)
    expect(page)(page.locator(".rate")).to_contain_text("0%")
    screenshot("task-history")
    page.go_back()
    expect(page)(page).to_have_url(re.compile(r"/records/r123$"))
    page.go_back()
    expect(page)(page.locator("table.records")).to_be_visible()
    page.get_by_role("link", name="Nodes").click()
    expect(page)(page.locator('tr[data-node="n1"]')).to_contain_text("0/4")
    page.locator('tr[data-node="n1"] details summary').click()
    expect(page)(page.locator('tr[data-node="n1"] pre')).to_contain_text("n1.example")
    page.get_by_role("button", name="Disable").click()
    expect(page)(page.locator('tr[data-node="n1"]')).to_contain_text("disabled")
    assert seeded.node("n1").enabled is False
    screenshot("nodes")


def test_raw_results_open_and_attachments_download(
    seeded: Service,
    node: str,
    live_server: WebServer,
    page: Any,
    screenshot: Callable[[str], None],
) -> None:
    now = time.time()
    files = [
        Attachment(ATTACH_R123, "build.log", "Build log", "text/plain", 12, b"all good\nok\n", now),
        Attachment(
            ATTACH_R123,
            "report.html",
            "Report",
            "text/html",
            30,
            b"<script>alert('xss')</script>",
            now,
        ),
    ]
    run_task(seeded, ATTACH_R123, node)
    finish_task(
        seeded, ATTACH_R123, node, results={"success": True, "items": [1, 2]}, attachments=files
    )
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(live_server.url + "records/r123")
    raw = page.locator(f"#task-{ATTACH_R123} details.raw")
    expect(page)(raw.locator("pre")).to_be_hidden()
    raw.locator("summary").click()
    expect(page)(raw.locator("pre")).to_be_visible()
    expect(page)(raw.locator("pre")).to_contain_text('"items": [')
    screenshot("record-raw-results")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Report").click()
    download = download_info.value
    assert download.suggested_filename == "report.html"
    assert Path(download.path()).read_bytes() == b"<script>alert('xss')</script>"
    page.get_by_role("link", name="Build log").click()
    expect(page)(page.locator("body")).to_contain_text("all good")
    assert dialogs == []


def test_xss_description_shows_as_text(
    seeded: Service, live_server: WebServer, page: Any, screenshot: Callable[[str], None]
) -> None:
    xss = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    seeded.submit([{"_id": "rx", "type": "record", "description": xss + "\nsecond line"}])
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(live_server.url)
    expect(page)(page.locator('tr[data-record="rx"] td.desc')).to_have_text(xss)
    page.goto(live_server.url + "records/rx")
    expect(page)(page.locator("dd.description")).to_have_text(xss + "\nsecond line")
    screenshot("xss")
    assert dialogs == []


SLOW_PRINTER = """\
import time

def execute(lines=10, pause=0.4):
    for i in range(lines):
        print(f"line {i}", flush=True)
        time.sleep(pause)
    return {"success": True}
"""


def test_the_output_view_shows_lines_while_the_task_runs(
    service: Service,
    local_node: str,
    add_task_module: Callable[[str, str], str],
    page: Any,
    screenshot: Callable[[str], None],
) -> None:
    from dirt.web.app import create_app
    from tests.conftest import RunningDispatcher

    add_task_module("printer", SLOW_PRINTER)
    server = WebServer(create_app(service, bind_host="127.0.0.1"), "127.0.0.1", 0)
    server.start()
    dispatcher = RunningDispatcher(service)
    try:
        (task,) = service.submit_tasks("r1", ["printer"]).tasks
        page.goto(server.url + "records/r1")
        row = page.locator(f"#task-{task.id}")
        expect(page)(row.locator("span.state")).to_have_text("running", timeout=10_000)
        row.get_by_role("link", name="Output").click()
        view = page.locator("#output-view")
        expect(page)(view).to_be_visible()
        expect(page)(view.locator(".output-state")).to_have_text("live")
        expect(page)(view.locator("pre.output")).to_contain_text("line 1", timeout=5_000)
        # Seen while the task still runs: lines keep coming into the same view.
        assert service.task(task.id).state is TaskState.RUNNING
        assert "line 9" not in view.locator("pre.output").text_content()
        screenshot("output-live")
        expect(page)(view.locator("pre.output")).to_contain_text("line 9", timeout=15_000)
        expect(page)(view.locator(".output-state")).to_have_text("succeeded", timeout=10_000)
        text = view.locator("pre.output").text_content()
        assert text == "".join(f"line {i}\n" for i in range(10))
        screenshot("output-finished")
    finally:
        dispatcher.stop()
        server.stop()
