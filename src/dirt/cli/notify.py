"""`dirt notify list|test|retry`: the notification outbox, and a check of every channel."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.markup import escape
from rich.table import Table

from dirt.cli.base import Context, ago, out, when
from dirt.db import outbox


@click.group()
def notify() -> None:
    """Notifications: what waits or failed, a test message, sending failed ones again."""


@notify.command("list")
@click.option("--all", "show_all", is_flag=True, help="Sent and superseded ones too.")
@click.option("--record", "record_id", help="Only those about this record.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def notify_list(
    obj: Context, show_all: bool, record_id: str | None, limit: int, as_json: bool
) -> None:
    """Notifications pending (with their next try), being sent, and failed (with why),
    newest first."""
    states = outbox.STATES if show_all else (outbox.PENDING, outbox.SENDING, outbox.FAILED)
    found = obj.service.notifications(states, limit, record_id)
    counts = obj.service.notification_counts()
    if as_json:
        view = {"counts": counts, "notifications": [n.to_doc() for n in found]}
        click.echo(json.dumps(view, indent=2))
        return
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "none"
    out.print(escape(f"notifications: {summary}"))
    if not found:
        out.print("nothing pending or failed" if not show_all else "no notifications")
        return
    table = Table("id", "state", "channel", "event", "record", "tries", "when", "last error")
    for n in found:
        if n.state == outbox.PENDING:
            moment = "next " + when(n.next_try)
        elif n.finished is not None:
            moment = ago(n.finished)
        else:
            moment = "made " + ago(n.created)
        table.add_row(
            str(n.id),
            escape(n.state),
            escape(n.channel + (f" {n.target}" if n.target else "")),
            escape(n.kind),
            escape(n.record_id or "-"),
            str(n.attempts),
            moment,
            escape((n.last_error or "")[:80]),
        )
    out.print(table)


@notify.command("test")
@click.pass_obj
def notify_test(obj: Context) -> None:
    """Send a test message through every configured channel now (mail and webhooks), and
    check that GitHub and GitLab accept the token; exit 1 when any fails."""
    from dirt.notify.check import check_channels

    results = check_channels(obj.settings)
    if not results:
        out.print(escape("no [notify.*] channel is configured in dirt.toml: nothing to test"))
        sys.exit(1)
    failed = 0
    for channel, problem, detail in results:
        if problem is None:
            out.print(escape(f"✓ {channel}: {detail}"))
        else:
            failed += 1
            out.print(escape(f"✗ {channel}: {problem}"))
    sys.exit(1 if failed else 0)


@notify.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.pass_obj
def notify_retry(obj: Context, ids: tuple[int, ...]) -> None:
    """Send failed notifications again: those named by ID, or all of them."""
    count = obj.service.retry_notifications(list(ids) or None, time.time())
    out.print(f"{count} failed notification(s) pending again; a running `dirt serve` sends them")
