"""Email: one message per finished record (plain text and HTML), sent with smtplib."""

from __future__ import annotations

import html
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

from dirt.ci_config import EmailSettings
from dirt.db.outbox import Notification
from dirt.models import Record, Task, TaskState
from dirt.notify.base import PermanentFailure, TemporaryFailure
from dirt.notify.links import branch, clip, record_url, short_id, task_url

REASON_LINES = 12  # the end of a traceback says what went wrong
REASON_CHARS = 2000


@dataclass(frozen=True)
class EmailContent:
    subject: str
    text: str
    html: str


def _reason(task: Task) -> str:
    lines = (task.reason or "no reason given").rstrip().splitlines()
    return clip("\n".join(lines[-REASON_LINES:]), REASON_CHARS)


def _summary(tasks: Sequence[Task]) -> str:
    failed = sum(t.state == TaskState.FAILED for t in tasks)
    cancelled = sum(t.state == TaskState.CANCELLED for t in tasks)
    if failed:
        text = f"{failed} of {len(tasks)} task{'s' if len(tasks) != 1 else ''} failed"
        return text + (f", {cancelled} cancelled" if cancelled else "")
    if cancelled:
        return f"{cancelled} of {len(tasks)} tasks cancelled"
    return f"all {len(tasks)} task{'s' if len(tasks) != 1 else ''} passed"


def render_record_email(
    record: Record,
    tasks: Sequence[Task],
    *,
    project: str,
    base_url: str,
    previous: str | None = None,
) -> EmailContent:
    """The message about a finished record: subject with its short id and the count failed,
    a body listing each failed task with its reason and a link."""
    where = f" on {branch(record)}" if branch(record) else ""
    summary = _summary(tasks)
    subject = f"[{project}] {short_id(record)}{where}: {summary}"
    if record.description:
        subject += f": {clip(record.description.splitlines()[0], 80)}"
    failed = [t for t in tasks if t.state == TaskState.FAILED]
    url = record_url(base_url, record.id)
    facts = [
        (label, record.extra[key])
        for label, key in (("Author", "author"), ("Commit", "changeset_url"))
        if isinstance(record.extra.get(key), str) and record.extra[key]
    ]
    if previous:
        facts.append(("Before", f"the previous record{where} {previous}"))
    text = [f"Record {record.id}{where}: {summary}.", record.description, ""]
    text += [f"{label}: {value}" for label, value in facts]
    if failed:
        text += ["", "Failed tasks:"]
        for task in failed:
            node = f" on {task.node}" if task.node else ""
            text.append(f"\n* {task.name}{node}")
            text += [f"    {line}" for line in _reason(task).splitlines()]
            text.append(f"    {task_url(base_url, record.id, task.id)}")
    text += ["", f"The record: {url}", ""]
    return EmailContent(
        subject, "\n".join(text), _html(record, failed, summary, where, facts, base_url)
    )


def _html(
    record: Record,
    failed: Sequence[Task],
    summary: str,
    where: str,
    facts: list[tuple[str, str]],
    base_url: str,
) -> str:
    e = html.escape
    url = record_url(base_url, record.id)
    parts = [
        '<!DOCTYPE html><html><body style="font-family: sans-serif">',
        f'<p><a href="{e(url)}">Record {e(record.id)}</a>{e(where)}: <b>{e(summary)}</b>.</p>',
        f"<p>{e(record.description)}</p>",
    ]
    if facts:
        parts.append("<table>")
        for label, value in facts:
            shown = f'<a href="{e(value)}">{e(value)}</a>' if value.startswith("http") else e(value)
            parts.append(f'<tr><th align="left">{e(label)}</th><td>{shown}</td></tr>')
        parts.append("</table>")
    if failed:
        parts.append("<h3>Failed tasks</h3><ul>")
        for task in failed:
            link = task_url(base_url, record.id, task.id)
            node = f" on {e(task.node)}" if task.node else ""
            parts.append(
                f'<li><a href="{e(link)}">{e(task.name)}</a>{node}'
                f"<pre>{e(_reason(task))}</pre></li>"
            )
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _code_failure(code: int, what: str) -> TemporaryFailure | PermanentFailure:
    """SMTP 4xx: try again later; 5xx: final."""
    if 400 <= code < 500:
        return TemporaryFailure(what)
    return PermanentFailure(what)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class EmailChannel:
    """Sends `[notify.email]` messages; the password is read from its variable at each send."""

    name = "email"

    def __init__(self, settings: EmailSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = environ

    def message(self, notification: Notification) -> EmailMessage:
        payload = notification.payload
        message = EmailMessage()
        message["Subject"] = payload["subject"]
        message["From"] = payload.get("sender") or self.settings.sender
        message["To"] = ", ".join(payload.get("to") or self.settings.to)
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = payload["message_id"]
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to dirt
        message.set_content(payload["text"])
        if payload.get("html"):
            message.add_alternative(payload["html"], subtype="html")
        return message

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        if s.ssl:
            return smtplib.SMTP_SSL(s.smtp_host, s.port, timeout=s.timeout, context=context)
        smtp = smtplib.SMTP(s.smtp_host, s.port, timeout=s.timeout)
        if s.starttls:
            smtp.starttls(context=context)
        return smtp

    def send(self, notification: Notification) -> None:
        s = self.settings
        password = ""
        if s.username:
            password = self.environ.get(s.password_env, "")
            if not password:
                raise TemporaryFailure(
                    f"notify.email.password_env: ${s.password_env} is not set for the server"
                )
        try:
            message = self.message(notification)
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentFailure(f"the stored message cannot be sent: {exc!r}") from None
        where = f"SMTP {s.smtp_host}:{s.port}"
        try:
            with self._connect() as smtp:
                if s.username:
                    smtp.login(s.username, password)
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(f"{r}: {c} {_text(m)}" for r, (c, m) in exc.recipients.items())
            if any(400 <= c < 500 for c in codes):
                raise TemporaryFailure(f"{where} refused every recipient: {detail}") from None
            raise PermanentFailure(f"{where} refused every recipient: {detail}") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentFailure(f"{where}: {exc} (check starttls, ssl and username)") from None
        except smtplib.SMTPResponseException as exc:
            raise _code_failure(
                exc.smtp_code, f"{where}: {exc.smtp_code} {_text(exc.smtp_error)}"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise PermanentFailure(f"{where}: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"{where}: {exc or type(exc).__name__}") from None
        if refused:
            # The others have the message: sending again would send it to them twice.
            detail = "; ".join(f"{r}: {c} {_text(m)}" for r, (c, m) in refused.items())
            raise PermanentFailure(f"{where} took the message but refused {detail}")
