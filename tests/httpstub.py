"""A real HTTP server on loopback that records every request and answers as told.

Stands in for the dirt server (the hook's target), GitHub's and GitLab's APIs and webhook
receivers. Answers come from a queue (`answer_next`) and then the default status.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpStub:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.status = 201
        self.body = b"{}"
        self.extra_headers: dict[str, str] = {}
        self._queue: list[tuple[int, bytes, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                with stub._lock:
                    status, answer, headers = (
                        stub._queue.pop(0)
                        if stub._queue
                        else (stub.status, stub.body, stub.extra_headers)
                    )
                    stub.requests.append(request)
                    stub._arrived.notify_all()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_PUT = do_POST
            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer_next(self, status: int, body: bytes = b"{}", **headers: str) -> None:
        with self._lock:
            self._queue.append((status, body, headers))

    def wait_for(self, count: int, timeout: float = 10) -> list[Request]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} request(s) arrived, wanted {count}")
            return list(self.requests)

    def start(self) -> HttpStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@contextmanager
def http_stub(port: int = 0) -> Iterator[HttpStub]:
    stub = HttpStub(port).start()
    try:
        yield stub
    finally:
        stub.stop()


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
