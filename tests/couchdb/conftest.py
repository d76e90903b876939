"""CouchDB fixtures: dirt's real web server over TCP, and a real PouchDB Server (npm)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.run import WebServer
from tests.conftest import need
from tests.web.conftest import node, seeded  # noqa: F401 (fixtures the tests here use)


@pytest.fixture
def db_name(service: Service) -> str:
    return service.settings.project.database or service.settings.name


def serve(service: Service, bind_host: str = "127.0.0.1") -> WebServer:
    server = WebServer(create_app(service, bind_host=bind_host), "127.0.0.1", 0)
    server.start()
    return server


@pytest.fixture
def dirt_url(seeded: Service) -> Iterator[str]:  # noqa: F811
    """The base URL of dirt's web server (uvicorn on a loopback port) over the seeded store."""
    server = serve(seeded)
    yield f"http://127.0.0.1:{server.port}/"
    server.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HTTPFailure(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def http_json(method: str, url: str, body: Any = None, timeout: float = 60) -> Any:
    """The JSON answer, or HTTPFailure (with the connection closed) for an error status."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            answer = exc.read()
        raise HTTPFailure(exc.code, json.loads(answer or b"{}")) from None


class PouchDBServer:
    """`pouchdb-server --in-memory` on a free loopback port, its logs in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        executable = shutil.which("pouchdb-server")
        need(executable is not None, "pouchdb-server (npm install -g pouchdb-server@4.2.0)")
        assert executable is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = (workdir / "pouchdb-server.log").open("wb")
        self.proc = subprocess.Popen(
            [executable, "--in-memory", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=workdir,  # it writes config.json and log.txt where it runs
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.version = http_json("GET", self.url, timeout=2)["version"]
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"pouchdb-server did not start: {self.log.name}") from None
                time.sleep(0.05)

    def replicate(self, source: str, target: str, **options: Any) -> dict[str, Any]:
        """`POST /_replicate` and its answer (the replication's report)."""
        body = {"source": source, "target": target, "create_target": True, **options}
        try:
            answer: dict[str, Any] = http_json("POST", self.url + "_replicate", body, timeout=90)
        except HTTPFailure as exc:  # a failed replication: its report says why
            answer = {"status": exc.status, **exc.body}
        return answer

    def all_docs(self, db: str) -> dict[str, Any]:
        """The documents of database `db` ({} while it does not exist)."""
        try:
            rows = http_json("GET", f"{self.url}{db}/_all_docs?include_docs=true")["rows"]
        except HTTPFailure as exc:
            if exc.status == 404:
                return {}
            raise
        return {row["id"]: row["doc"] for row in rows}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def pouchdb(tmp_path: Path) -> Iterator[PouchDBServer]:
    server = PouchDBServer(tmp_path)
    yield server
    server.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
