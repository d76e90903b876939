"""`dirt queue`: per record, its waiting and running tasks and the share of the slots it gets."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from dirt.cli.base import Context, ago, out
from dirt.views import queue_view


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.pass_obj
def queue(obj: Context, as_json: bool, limit: int) -> None:
    """Records with waiting or running tasks, oldest first, and what each gets."""
    found = obj.service.queue(limit)
    if as_json:
        click.echo(json.dumps(queue_view(found), indent=2))
        return
    if found.dispatchers:
        running = ", ".join(
            f"{d.host} (pid {d.pid}, seen {ago(d.last_seen)})" for d in found.dispatchers
        )
        out.print(escape(f"order: {found.order}; dispatcher: {running}"))
    else:
        out.print(escape(f"order: {found.order}; {found.idle}"))
    if not found.entries:
        out.print("nothing waits or runs")
        return
    table = Table()
    table.add_column("record", no_wrap=True)
    table.add_column("share", justify="right")
    table.add_column("waiting", justify="right")
    table.add_column("running", justify="right")
    table.add_column("gets", justify="right")
    table.add_column("description", overflow="ellipsis", max_width=40)
    for e in found.entries:
        table.add_row(
            escape(e.record.id),
            str(e.record.share),
            f"{e.waiting:,}",
            f"{e.running:,}",
            f"{e.gets:.0%}" if found.running else "-",
            escape(e.record.description.splitlines()[0]) if e.record.description else "",
        )
    out.print(table)
    more = found.records - len(found.entries)
    out.print(
        f"{found.records:,} record(s) in the queue{f' ({more:,} not shown)' if more else ''}: "
        f"{found.waiting:,} waiting, {found.running:,} running"
    )
