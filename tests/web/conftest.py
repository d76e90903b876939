"""Web fixtures: the real app over a real SQLite store, a real uvicorn server, Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dirt.models import TaskState, TokenScope
from dirt.service import Finished, Service
from dirt.web.app import create_app
from dirt.web.run import WebServer
from tests.conftest import DIRT, need, project_service

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# What a browser sends. `GET /` answers a request without text/html (a CouchDB client) with
# CouchDB's welcome object, so tests of the overview page send this.
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def seed_docs() -> list[dict[str, Any]]:
    text = (resources.files("dirt") / "seed" / "test_data.json").read_text(encoding="utf-8")
    return json.loads(text)


@pytest.fixture
def seeded(service: Service) -> Service:
    """The service with the seed's records r123 and r124 stored."""
    service.submit(seed_docs())
    return service


def make_client(app: Any, host: str = "127.0.0.1") -> TestClient:
    return TestClient(app, client=(host, 50000), base_url="http://127.0.0.1:8080")


@pytest.fixture
def client(seeded: Service) -> Iterator[TestClient]:
    """A loopback client of an app bound to loopback: may read and write without a token."""
    with make_client(create_app(seeded, bind_host="127.0.0.1")) as c:
        yield c


@pytest.fixture
def remote(seeded: Service) -> Iterator[TestClient]:
    """A client from another machine of an app listening on every address."""
    with make_client(create_app(seeded, bind_host="0.0.0.0"), host="203.0.113.7") as c:
        yield c


@pytest.fixture
def node(service: Service) -> str:
    """A node row the tests claim tasks for by hand (no dispatcher runs)."""
    service.save_node("n1", {"cpu_count": 4, "hostname": "n1.example", "platform": "linux"})
    return "n1"


def run_task(service: Service, task_id: str, node: str) -> None:
    """Reserve the task and start it on `node`, as a dispatcher does."""
    assert service.dispatch([], [], [task_id]) == ([], [task_id])
    attempt = service.task(task_id).attempts + 1
    assert service.dispatch([], [(task_id, node, time.time(), attempt)], []) == ([task_id], [])


def finish_task(
    service: Service,
    task_id: str,
    node: str,
    state: TaskState = TaskState.SUCCEEDED,
    results: dict[str, Any] | None = None,
    attachments: list[Any] | None = None,
    reason: str | None = None,
) -> None:
    task = service.task(task_id)
    service.dispatch(
        [
            Finished(
                task_id=task_id,
                attempt=task.attempts,
                node=node,
                state=state,
                results=results if results is not None else {"success": state.value == "succeeded"},
                reason=reason,
                module_sha256=None,
                attachments=attachments or [],
                completed=time.time(),
            )
        ],
        [],
        [],
    )


@pytest.fixture
def live_server(seeded: Service) -> Iterator[WebServer]:
    server = WebServer(create_app(seeded, bind_host="127.0.0.1"), "127.0.0.1", 0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    need(shutil.which("chromium") is not None or Path(CHROMIUM).exists(), "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, timezone_id="Europe/Berlin")
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


@pytest.fixture
def screenshot(page: Any) -> Callable[[str], None]:
    def shoot(name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    return shoot


def make_token(project: Path, name: str, scope: TokenScope = TokenScope.API) -> str:
    """A token made as `dirt token create NAME --scope SCOPE` makes it, in-process: for tests
    whose subject is not that command (its tests are tests/cli/test_security_cli.py)."""
    with project_service(project) as service:
        return service.create_token(name, scope)


# ---- real `dirt serve` / `dirt web` processes ------------------------------------------------

URL_LINE = re.compile(r"Web page and API at (https?://\S+/) ")


def start_dirt(
    project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> tuple[subprocess.Popen[str], str]:
    """Run `dirt ARGS --port 0` in `project` until it prints its URL; returns (process, URL).
    Its stderr (the log) is read by `stop_dirt`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    full_env.update(env or {})
    proc = subprocess.Popen(
        [DIRT, *args, "--port", "0"],
        cwd=project,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = URL_LINE.search(line)
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    _, errors = proc.communicate()
    raise AssertionError(f"no URL printed: {errors}")


def stop_dirt(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str]:
    """SIGTERM, wait; returns (exit code, everything it logged on stderr)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, errors = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, errors = proc.communicate()
    return proc.returncode, errors
