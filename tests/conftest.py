"""Shared fixtures: a fresh project per test, its service, a running dispatcher, task modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dirt.config import Settings, load_settings
from dirt.dispatch.loop import Dispatcher
from dirt.project import create_project
from dirt.service import Service

IN_CI = os.environ.get("CI", "").lower() == "true"
DIRT = str(Path(sys.executable).with_name("dirt"))


def need(condition: bool, what: str) -> None:
    """Skip when a real component is missing, except in CI where that is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{what} is missing; CI must have it (make test installs it as root)")
        pytest.skip(f"{what} is missing")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A new project made by `dirt create`, with its example tasks."""
    return create_project(tmp_path / "proj")


@pytest.fixture
def add_task_module(project: Path) -> Callable[[str, str], str]:
    """Write tasks/<dotted name>.py with the given source; returns the name."""

    def add(name: str, source: str) -> str:
        path = project / "tasks" / Path(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
        return name

    return add


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    """Tests override this (or mutate it before use) to change dirt.toml values."""
    return {"dispatch": {"poll_interval": 0.02}, "log": {"file": ""}}


@pytest.fixture
def settings(project: Path, settings_overrides: dict[str, dict[str, Any]]) -> Settings:
    return load_settings(project, overrides=settings_overrides, environ={})


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    svc = Service(settings)
    yield svc
    svc.close()


@pytest.fixture
def local_node(service: Service) -> str:
    """This machine as node 'local' with 2 slots, probed for real."""
    from dirt.dispatch.runner import probe

    service.save_node("local", probe("local", service.settings.nodes), slots=2)
    return "local"


@contextmanager
def project_service(project: Path) -> Iterator[Service]:
    """The project's store, opened in this process (as a `dirt` command would open it) and
    closed after: for reads and set-up that are not a test's subject, where a `dirt` process
    would cost 0.7-0.8 s to start."""
    service = Service(load_settings(project, environ={}))
    try:
        yield service
    finally:
        service.close()


def add_local_node(project: Path, slots: int | None = None) -> None:
    """This machine as node `local`, probed for real and stored as `dirt nodes add local
    [--slots N]` stores it; in-process, where a test's subject is not that command (1.3 s as a
    process, with the probe)."""
    from dirt.dispatch.runner import probe

    with project_service(project) as service:
        service.save_node("local", probe("local", service.settings.nodes), slots)


class RunningDispatcher:
    def __init__(self, service: Service) -> None:
        self.dispatcher = Dispatcher(service)
        self.thread = threading.Thread(target=self.dispatcher.run, name="test-dispatcher")
        self.thread.start()
        assert self.dispatcher.ready.wait(10)

    def stop(self) -> None:
        self.dispatcher.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "dispatcher did not stop"


@pytest.fixture
def start_dispatcher() -> Iterator[Callable[[Service], RunningDispatcher]]:
    """Start a dispatcher on a service, in a thread of the test process; each one started is
    stopped at teardown (unless the test stopped it)."""
    started: list[RunningDispatcher] = []

    def start(service: Service) -> RunningDispatcher:
        started.append(RunningDispatcher(service))
        return started[-1]

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def dispatcher(service: Service) -> Iterator[RunningDispatcher]:
    """A dispatcher running in a thread of the test process; stopped at teardown."""
    running = RunningDispatcher(service)
    yield running
    running.stop()


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.02, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def wait_finished(service: Service, task_ids: list[str], timeout: float = 30) -> list[Any]:
    def done() -> list[Any] | None:
        found = service.tasks(task_ids)
        return found if found and all(t.state.finished for t in found) else None

    return wait_for(done, timeout, what=f"tasks {task_ids} to finish")


def run_dirt(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run the real `dirt` command."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "200")
    return subprocess.run(
        [DIRT, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem): self-signed for localhost and 127.0.0.1, valid for a day."""
    need(shutil.which("openssl") is not None, "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def have(program: str) -> bool:
    return shutil.which(program) is not None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL server for the whole run."""
    from tests.postgres import PostgresServer, find_bin

    need(find_bin("initdb") is not None and find_bin("pg_ctl") is not None, "PostgreSQL")
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_settings(
    request: pytest.FixtureRequest, project: Path, settings_overrides: dict[str, dict[str, Any]]
) -> Settings:
    """The project's settings on each backend: SQLite, then a fresh PostgreSQL database."""
    overrides = {k: dict(v) for k, v in settings_overrides.items()}
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        url = server.new_database()
        request.addfinalizer(lambda: server.drop_database(url))
        overrides.setdefault("project", {})["database_url"] = url
    return load_settings(project, overrides=overrides, environ={})


@pytest.fixture
def store(store_settings: Settings) -> Iterator[Service]:
    """A service on each backend (the store suite runs against both)."""
    svc = Service(store_settings)
    yield svc
    svc.close()
