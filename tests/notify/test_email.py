"""Email: what a finished record's message says, and sending it to a real SMTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dirt.ci_config import EmailSettings
from dirt.db.outbox import Notification
from dirt.models import TaskState
from dirt.notify.base import PermanentFailure, TemporaryFailure
from dirt.notify.email import EmailChannel, render_record_email
from dirt.notify.plan import should_email
from tests.httpstub import free_port
from tests.notify.conftest import BASE_URL, SHA, SmtpServer, git_record, server_tls, task

TASKS = [
    task("ci.build", TaskState.SUCCEEDED),
    task("ci.test", TaskState.FAILED, "Traceback (most recent call last):\nAssertionError: 2 != 3"),
    task("ci.lint", TaskState.FAILED, "E501 <line> too long"),
]


def render(**options: str | None) -> tuple[str, str, str]:
    content = render_record_email(
        git_record(), TASKS, project="hello", base_url=BASE_URL, previous=options.get("previous")
    )
    return content.subject, content.text, content.html


def test_the_subject_has_the_short_sha_branch_and_count_failed() -> None:
    subject, _, _ = render()
    assert subject == f"[hello] {SHA[:10]} on main: 2 of 3 tasks failed: Add the frobnicator"


def test_the_body_lists_each_failed_task_with_its_reason_and_link() -> None:
    _, text, _ = render()
    assert "* ci.test on build1" in text and "AssertionError: 2 != 3" in text
    assert f"{BASE_URL}/records/{SHA}#task-t-ci.test" in text
    assert f"{BASE_URL}/records/{SHA}#task-t-ci.lint" in text
    assert "ci.build" not in text


def test_the_body_names_the_author_commit_and_previous_outcome() -> None:
    _, text, _ = render(previous="passed")
    assert "Author: Mona <mona@example.org>" in text
    assert f"Commit: https://github.com/octo/hello/commit/{SHA}" in text
    assert "Before: the previous record on main passed" in text


def test_the_html_part_escapes_what_it_shows() -> None:
    _, _, html = render()
    assert "E501 &lt;line&gt; too long" in html and "<line>" not in html
    assert f'href="{BASE_URL}/records/{SHA}#task-t-ci.test"' in html


def test_a_record_that_passed_says_so() -> None:
    content = render_record_email(
        git_record(), TASKS[:1], project="hello", base_url=BASE_URL, previous=None
    )
    assert content.subject.endswith("all 1 task passed: Add the frobnicator")


@pytest.mark.parametrize(
    ("when", "outcome", "previous", "sent"),
    [
        ("failing", "failed", "failed", True),
        ("failing", "passed", "failed", False),
        ("problem", "failed", "passed", True),
        ("problem", "failed", "failed", False),
        ("problem", "failed", None, True),
        ("problem", "passed", "failed", False),
        ("change", "passed", "failed", True),
        ("change", "failed", "passed", True),
        ("change", "passed", "passed", False),
        ("change", "passed", None, False),
        ("change", "failed", None, True),
        ("always", "passed", "passed", True),
    ],
)
def test_when_decides_which_records_are_mailed(
    when: str, outcome: str, previous: str | None, sent: bool
) -> None:
    assert should_email(when, outcome, previous) is sent


def mail(subject: str = "2 of 3 tasks failed") -> Notification:
    payload = {
        "sender": "dirt@example.org",
        "to": ["dev@example.org", "ops@example.org"],
        "subject": subject,
        "text": "plain body",
        "html": "<p>html body</p>",
        "message_id": "<dirt.1@example.org>",
    }
    return Notification(1, "record.finished", "email", payload, "sending", 1, 0.0, 0.0)


def channel(port: int, **options: object) -> EmailChannel:
    settings = EmailSettings(smtp_host="127.0.0.1", smtp_port=port, to=["x@example.org"])
    for key, value in options.items():
        setattr(settings, key, value)
    return EmailChannel(settings, {"SMTP_PASSWORD": "hunter2"})


def test_a_message_reaches_the_smtp_server_as_text_and_html(smtp: SmtpServer) -> None:
    channel(smtp.port).send(mail())
    [message] = smtp.inbox.messages
    assert message["Subject"] == "2 of 3 tasks failed"
    assert message["From"] == "dirt@example.org"
    assert message["Message-ID"] == "<dirt.1@example.org>"
    assert smtp.inbox.envelopes == [("dirt@example.org", ["dev@example.org", "ops@example.org"])]
    assert message.get_body(("plain",)).get_content().strip() == "plain body"
    assert message.get_body(("html",)).get_content().strip() == "<p>html body</p>"


def test_starttls_and_login_with_the_password_from_its_variable(
    smtp_later: SmtpServer, certificate: tuple[Path, Path]
) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"hunter2")

    smtp_later.options = {
        "tls_context": server_tls(certificate),
        "require_starttls": True,
        "authenticator": authenticator,
    }
    smtp_later.start()
    channel(smtp_later.port, starttls=True, username="dirt", password_env="SMTP_PASSWORD").send(
        mail()
    )
    assert logins == [(b"dirt", b"hunter2")]
    assert len(smtp_later.inbox.messages) == 1


def test_ssl_from_the_start(smtp_later: SmtpServer, certificate: tuple[Path, Path]) -> None:
    smtp_later.options = {"ssl_context": server_tls(certificate)}
    smtp_later.start()
    channel(smtp_later.port, ssl=True).send(mail())
    assert len(smtp_later.inbox.messages) == 1


def test_a_refused_login_is_final(smtp_later: SmtpServer, certificate: tuple[Path, Path]) -> None:
    from aiosmtpd.smtp import AuthResult

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        return AuthResult(success=False, handled=False)

    smtp_later.options = {"tls_context": server_tls(certificate), "authenticator": authenticator}
    smtp_later.start()
    with pytest.raises(PermanentFailure, match="535"):
        channel(smtp_later.port, starttls=True, username="dirt", password_env="SMTP_PASSWORD").send(
            mail()
        )


def test_an_smtp_server_that_is_down_is_a_temporary_failure() -> None:
    with pytest.raises(TemporaryFailure, match="Connection refused"):
        channel(free_port()).send(mail())


def test_recipients_refused_for_now_are_a_temporary_failure(smtp: SmtpServer) -> None:
    smtp.inbox.rcpt_reply = "451 4.7.1 greylisted, try again later"
    with pytest.raises(TemporaryFailure, match="451"):
        channel(smtp.port).send(mail())


def test_recipients_refused_for_good_are_final(smtp: SmtpServer) -> None:
    smtp.inbox.rcpt_reply = "550 5.1.1 no such user"
    with pytest.raises(PermanentFailure, match="550"):
        channel(smtp.port).send(mail())
    assert smtp.inbox.messages == []


def test_a_missing_password_variable_is_retried_not_lost(smtp: SmtpServer) -> None:
    email = EmailChannel(
        EmailSettings(smtp_host="127.0.0.1", smtp_port=smtp.port, username="u", password_env="P"),
        {},
    )
    with pytest.raises(TemporaryFailure, match=r"\$P is not set"):
        email.send(mail())


def test_a_stored_message_that_cannot_be_built_is_final(smtp: SmtpServer) -> None:
    broken = mail(subject="two\nlines")
    with pytest.raises(PermanentFailure, match="cannot be sent"):
        channel(smtp.port).send(broken)
    assert smtp.inbox.messages == []
