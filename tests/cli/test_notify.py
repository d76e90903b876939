"""`dirt notify list|test|retry`, the settings `dirt create` documents, and `dirt serve`'s
warning about secrets that dirt.toml names but the environment lacks."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dirt.config import load_settings
from dirt.db import outbox
from dirt.db.engine import write_transaction
from dirt.db.outbox import NewNotification
from tests.cli.conftest import serve
from tests.conftest import project_service, run_dirt, wait_for
from tests.httpstub import HttpStub, free_port, http_stub
from tests.notify.conftest import SmtpServer


def append(project: Path, text: str) -> None:
    config = project / "dirt.toml"
    config.write_text(config.read_text() + "\n" + text)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def stub() -> Iterator[HttpStub]:
    with http_stub() as server:
        server.status = 200
        yield server


def test_a_new_project_documents_ci_and_notify_commented_out(cli_project: Path) -> None:
    toml = (cli_project / "dirt.toml").read_text()
    for table in ("# [ci]", "# [hooks]", "# [notify]", "# [notify.email]", "# [[notify.webhook]]"):
        assert table in toml
    assert "NOT IMPLEMENTED" not in toml
    settings = load_settings(cli_project, environ={})
    assert settings.notify.email is None and settings.ci.tasks == []


def test_the_skeletons_examples_load_when_uncommented(cli_project: Path) -> None:
    config = cli_project / "dirt.toml"
    head, tail = config.read_text().split("[web]", 1)
    config.write_text(head + "[web]" + re.sub(r"(?m)^# (\[|[a-z_]+ = )", r"\1", tail))
    settings = load_settings(cli_project, environ={})
    notify = settings.notify
    assert notify.email is not None and notify.email.to == ["team@example.org"]
    assert notify.github is not None and notify.gitlab is not None and notify.webhook
    assert settings.ci.tasks == ["ci.build", "ci.test"]
    assert settings.base_url == "https://ci.example.org"


def test_serve_warns_about_secrets_named_but_unset(cli_project: Path) -> None:
    append(cli_project, '[hooks]\ngithub_secret_env = "NOT_SET_ANYWHERE"\n')
    server = serve(cli_project)
    try:
        log = cli_project / "dirt.log"
        wait_for(lambda: log.exists() and "serving project" in log.read_text(), what="serve")
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "hooks.github_secret_env: $NOT_SET_ANYWHERE is not set" in output


def queue(project: Path, rows: list[NewNotification]) -> list[int]:
    with project_service(project) as service, write_transaction(service.engine) as conn:
        return outbox.insert_notifications(conn, rows, time.time())


def mail(subject: str) -> NewNotification:
    payload = {
        "sender": "ci@example.org",
        "to": ["dev@example.org"],
        "subject": subject,
        "text": "body",
        "html": "",
        "message_id": "<x@example.org>",
    }
    return NewNotification("record.finished", "email", payload, record_id="r1")


def fail(project: Path, notification_id: int) -> None:
    with project_service(project) as service, write_transaction(service.engine) as conn:
        [claimed] = outbox.claim_due(conn, "test", time.time(), 60, 1)
        assert claimed.id == notification_id
        outbox.mark_failed(conn, notification_id, "test", "550 no such user", time.time())


def test_notify_list_shows_what_waits_and_what_failed(cli_project: Path) -> None:
    failed, waiting = queue(cli_project, [mail("one"), mail("two")])
    fail(cli_project, failed)
    listed = run_dirt("notify", "list", cwd=cli_project)
    assert listed.returncode == 0, listed.stderr
    assert "notifications: 1 pending, 1 failed" in listed.stdout
    assert "550 no such user" in listed.stdout
    found = json.loads(run_dirt("notify", "list", "--json", cwd=cli_project).stdout)
    assert [(n["id"], n["state"]) for n in found["notifications"]] == [
        (waiting, "pending"),
        (failed, "failed"),
    ]
    assert found["counts"]["failed"] == 1


def test_an_empty_outbox_says_so(cli_project: Path) -> None:
    listed = run_dirt("notify", "list", cwd=cli_project)
    assert "notifications: none" in listed.stdout and "nothing pending or failed" in listed.stdout


def test_notify_retry_sends_failed_ones_again(cli_project: Path) -> None:
    [failed] = queue(cli_project, [mail("one")])
    fail(cli_project, failed)
    done = run_dirt("notify", "retry", cwd=cli_project)
    assert "1 failed notification(s) pending again" in done.stdout
    found = json.loads(run_dirt("notify", "list", "--json", cwd=cli_project).stdout)
    assert [(n["state"], n["attempts"]) for n in found["notifications"]] == [("pending", 0)]


def test_notify_test_sends_through_every_channel(
    cli_project: Path, smtp: SmtpServer, stub: HttpStub
) -> None:
    append(
        cli_project,
        f'[notify.email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp.port}\n'
        'to = ["dev@example.org"]\n'
        f'[notify.github]\napi_url = "{stub.url}/github"\nrepository = "octo/hello"\n'
        'token_env = "TEST_GH_TOKEN"\n'
        f'[[notify.webhook]]\nurl = "{stub.url}/hook"\n',
    )
    done = run_dirt("notify", "test", cwd=cli_project, env={"TEST_GH_TOKEN": "ghp_t"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ email: test message sent to dev@example.org" in done.stdout
    assert f"✓ webhook {stub.url}/hook: test event delivered" in done.stdout
    assert f"✓ github: GitHub answered at {stub.url}/github/repos/octo/hello" in done.stdout
    [message] = smtp.inbox.messages
    assert message["Subject"] == "[proj] test message from dirt"
    by_path = {r.path: r for r in stub.requests}
    assert by_path["/hook"].json()["event"] == "test"
    assert by_path["/github/repos/octo/hello"].method == "GET"
    assert by_path["/github/repos/octo/hello"].headers["authorization"] == "Bearer ghp_t"


def test_notify_test_exits_1_when_a_channel_fails(cli_project: Path) -> None:
    port = free_port()
    append(
        cli_project,
        f'[notify.email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\nto = ["a@example.org"]\n',
    )
    done = run_dirt("notify", "test", cwd=cli_project)
    assert done.returncode == 1
    assert "✗ email: SMTP 127.0.0.1" in done.stdout and "refused" in done.stdout.lower()


def test_notify_test_without_a_channel_says_so(cli_project: Path) -> None:
    done = run_dirt("notify", "test", cwd=cli_project)
    assert done.returncode == 1
    assert "no [notify.*] channel is configured" in done.stdout
