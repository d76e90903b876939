"""`dirt status`: records newest first with counts per state, or one record's tasks."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from dirt.cli.base import Context, out, styled_state, when
from dirt.models import Attempt, RecordSummary, Task, TaskState
from dirt.service import RecordDetail
from dirt.views import detail_view, summary_view

# An attempt that ended because its node was lost (the task went back to waiting).
LOST = "lost"


@click.command()
@click.argument("record_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.pass_obj
def status(obj: Context, record_id: str | None, as_json: bool, limit: int) -> None:
    """Records newest first with task counts, or one record's tasks."""
    if record_id is None:
        summaries = obj.service.record_page(limit=limit)
        if as_json:
            click.echo(json.dumps([summary_view(s) for s in summaries], indent=2))
        else:
            print_records(summaries)
        return
    detail = obj.service.record_detail(record_id)
    if as_json:
        click.echo(json.dumps(detail_view(detail, for_status=True), indent=2))
    else:
        print_record(detail)


def print_records(summaries: list[RecordSummary]) -> None:
    if not summaries:
        out.print("no records yet; submit some with `dirt submit FILE.json`")
        return
    table = Table()
    table.add_column("record", no_wrap=True)
    table.add_column("tasks", justify="right", no_wrap=True)
    table.add_column("states", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("description", overflow="ellipsis", max_width=40)
    for s in summaries:
        states = "  ".join(
            styled_state(state, f"{s.counts[state.value]} {state.value}")
            for state in TaskState
            if s.counts.get(state.value)
        )
        table.add_row(
            escape(s.record.id),
            str(s.ntasks),
            states or "-",
            when(s.record.created),
            escape(s.record.description.splitlines()[0]) if s.record.description else "",
        )
    out.print(table)


def _last_line(text: str | None) -> str:
    """The last line of a reason: a traceback's names the error."""
    lines = (text or "").strip().splitlines()
    return escape(lines[-1]) if lines else ""


def print_record(detail: RecordDetail) -> None:
    record = detail.record
    out.print(f"[bold]{escape(record.id)}[/]  {escape(record.description)}")
    for key, value in record.extra.items():
        out.print(escape(f"  {key}: {value}"))
    table = Table()
    table.add_column("task", overflow="fold")
    for column in ("node", "state", "duration", "tries"):
        table.add_column(column)
    table.add_column("reason")
    for t in detail.tasks:
        duration = f"{t.duration:.2f} s" if t.duration is not None else "-"
        job = detail.batch.get(t.id)
        node = job.describe() if job is not None and job.attempt == t.attempts else t.node
        if job is not None and t.state is TaskState.WAITING and job.closed is None:
            node = job.describe()  # queued in Slurm: the job to come
        table.add_row(
            f"{escape(t.name)}\n[dim]{escape(t.id)}[/]",
            escape(node or "-"),
            styled_state(t.state),
            duration,
            str(t.attempts),
            _last_line(t.reason or t.waiting_reason),
        )
    out.print(table)
    for t in detail.tasks:
        for f in detail.attachments.get(t.id, []):
            out.print(escape(f"  {t.id}: attachment {f.link_name} ({f.filename}, {f.size} bytes)"))
    tried = _worth_showing(detail.tasks, detail.attempts)
    if tried:
        attempts_table = Table("task", "try", "node", "started", "ended", "outcome")
        attempts_table.add_column("reason")
        for t, a in tried:
            attempts_table.add_row(
                f"[dim]{escape(t.id)}[/]",
                str(a.number),
                escape(a.node),
                when(a.started),
                when(a.completed),
                escape(a.outcome or TaskState.RUNNING.value),
                _last_line(a.reason),
            )
        out.print(attempts_table)


def _worth_showing(
    tasks: list[Task], attempts: dict[str, list[Attempt]]
) -> list[tuple[Task, Attempt]]:
    """Attempts of the tasks that were tried more than once or lost a node."""
    retried = {
        t.id
        for t in tasks
        if len(attempts.get(t.id, [])) > 1 or any(a.outcome == LOST for a in attempts.get(t.id, []))
    }
    return [(t, a) for t in tasks if t.id in retried for a in attempts[t.id]]
