"""`dirt cancel` and `dirt retry`: stop tasks, or run finished ones again."""

from __future__ import annotations

import click
from rich.markup import escape

from dirt.cli.base import Context, out
from dirt.models import TaskState


@click.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.pass_obj
def cancel(obj: Context, task_ids: tuple[str, ...]) -> None:
    """Cancel TASK_ID...: a waiting task at once, a running one is killed on its node."""
    for task_id in task_ids:
        task = obj.service.cancel_task(task_id)
        if task.state is TaskState.CANCELLED:
            out.print(f"task {escape(task_id)} cancelled")
        else:
            out.print(escape(f"task {task_id}: cancel requested; it is killed on {task.node}"))


@click.command()
@click.argument("target")
@click.option("--failed", is_flag=True, help="TARGET is a record: retry all its failed tasks.")
@click.pass_obj
def retry(obj: Context, target: str, failed: bool) -> None:
    """Run finished task TARGET again, or with --failed every failed task of record TARGET."""
    if failed:
        retried = obj.service.retry_failed(target)
        out.print(escape(f"{len(retried)} failed task(s) of {target} waiting again"))
        for task_id in retried:
            out.print(escape(f"  {task_id}"))
    else:
        obj.service.retry_task(target)
        out.print(f"task {escape(target)} waiting again")
