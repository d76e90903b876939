"""`dirt dispatchers`: the masters on this store, their leases, nodes and running tasks."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from dirt.cli.base import Context, ago, out, when
from dirt.views import dispatchers_view, short_master


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def dispatchers(obj: Context, as_json: bool) -> None:
    """The dispatchers (masters) serving this store: host, pid, started, last heartbeat, the
    nodes each drives and the tasks each runs. One whose lease ran out is dead; a live one
    takes over its tasks and nodes."""
    found = obj.service.dispatchers()
    if as_json:
        click.echo(json.dumps(dispatchers_view(found), indent=2))
        return
    if not found:
        out.print("no dispatcher is running; start one with `dirt serve`")
        return
    table = Table("dispatcher", "host", "pid", "state", "started", "heartbeat", "nodes", "running")
    for d in found:
        state = d.state if d.live else "[red]dead (lease ran out)[/]"
        table.add_row(
            escape(short_master(d.id)),
            escape(d.host),
            str(d.pid),
            state,
            when(d.started),
            ago(d.heartbeat),
            escape(", ".join(d.nodes) or "-"),
            str(d.running),
        )
    out.print(table)
