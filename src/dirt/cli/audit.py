"""`dirt audit`: who changed what, through the web or on this machine."""

from __future__ import annotations

import json
import time

import click
from rich.markup import escape
from rich.table import Table

from dirt.cli.base import Context, out, when


@click.command()
@click.option("--since", help="Only writes since then: 30m, 2h, 7d, 1w, 2024-05-01[T12:00].")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="At most this many (the newest).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def audit(obj: Context, since: str | None, limit: int, as_json: bool) -> None:
    """Every write made through the web (by token name, or the loopback user) or the CLI
    (by local user), oldest first."""
    from dirt.documents import parse_since

    start = parse_since(since, time.time()) if since else None
    found = obj.service.audit(start, limit)
    if as_json:
        click.echo(json.dumps([e.to_doc() for e in found], indent=2))
        return
    if not found:
        out.print("no writes recorded" + (" since then" if since else ""))
        return
    table = Table("time", "who", "via", "action", "target", "client", "request")
    for e in found:
        table.add_row(
            when(e.at),
            escape(e.actor),
            e.via,
            escape(e.action),
            escape(e.target),
            escape(e.client or "-"),
            escape(e.request or "-"),
        )
    out.print(table)
