"""A real SMTP server (aiosmtpd) on loopback, records and tasks to notify about."""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from dirt.models import Record, Task, TaskState
from tests.conftest import have, need
from tests.httpstub import HttpStub, free_port, http_stub

SHA = "1481a2de7b2a7d02428ad93446ab166be7793fbb"
BASE_URL = "https://dirt.example.org"


class Inbox:
    """An aiosmtpd handler keeping every message; `rcpt_reply` makes it refuse recipients."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.rcpt_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    port: int
    inbox: Inbox = field(default_factory=Inbox)
    options: dict[str, Any] = field(default_factory=dict)
    controller: Any = None

    def start(self) -> SmtpServer:
        from aiosmtpd.controller import Controller

        self.controller = Controller(
            self.inbox, hostname="127.0.0.1", port=self.port, **self.options
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def smtp(smtp_port: int) -> Iterator[SmtpServer]:
    """A running SMTP server on loopback."""
    server = SmtpServer(smtp_port).start()
    yield server
    server.stop()


@pytest.fixture
def smtp_later(smtp_port: int) -> Iterator[SmtpServer]:
    """An SMTP server not started yet (the test starts it): down for the first tries."""
    server = SmtpServer(smtp_port)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need(have("openssl"), "openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def certificate(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, trusted by this process (SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(self_signed[0]))
    return self_signed


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def stub() -> Iterator[HttpStub]:
    """A loopback HTTP server standing in for GitHub, GitLab or a webhook receiver."""
    with http_stub() as server:
        yield server


def git_record(**extra: Any) -> Record:
    fields = {
        "sha": SHA,
        "ref": "refs/heads/main",
        "repository": "https://github.com/octo/hello.git",
        "author": "Mona <mona@example.org>",
        "changeset_url": f"https://github.com/octo/hello/commit/{SHA}",
        **extra,
    }
    return Record(
        SHA, "Add the frobnicator", 1_700_000_000.0, {k: v for k, v in fields.items() if v}
    )


def task(name: str, state: TaskState, reason: str | None = None, **fields: Any) -> Task:
    return Task(
        id=f"t-{name}",
        record_id=SHA,
        name=name,
        state=state,
        reason=reason,
        node="build1" if state != TaskState.WAITING else None,
        started=1_700_000_010.0 if state.finished else None,
        completed=1_700_000_052.0 if state.finished else None,
        **fields,
    )
