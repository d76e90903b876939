"""`dirt submit`: documents from a JSON file, or tasks for a record; `--wait` follows them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dirt.cli.base import Context, err, out
from dirt.errors import SubmissionError
from dirt.models import MAX_SHARE, TaskState

if TYPE_CHECKING:
    from dirt.service import Service


def json_value(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """An option's JSON text, parsed; text that does not parse is a bad option value."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None


@click.command()
@click.argument("targets", nargs=-1, metavar="TARGET | --git [REV...]")
@click.option(
    "--git",
    "from_git",
    is_flag=True,
    help="A record per commit REV (default HEAD; A..B: every commit in it) of the checkout "
    "here, with the [ci] tasks (or -t); commits already recorded are left as they are.",
)
@click.option(
    "--repository",
    metavar="URL",
    help="With --git: what nodes clone (default: [ci] repository, else the branch's remote).",
)
@click.option("-d", "--description", help="The record's description (when it is new).")
@click.option("-t", "--task", "tasks", multiple=True, help="A task name; repeat for more.")
@click.option(
    "--kwargs",
    metavar="JSON",
    callback=json_value,
    help="JSON object passed to every task given with -t.",
)
@click.option(
    "--requires",
    "requirements",
    multiple=True,
    help="A requirement, e.g. 'architecture is x86_64'; repeat for more.",
)
@click.option("--platform", help="linux, osx or windows.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--timeout", type=float, help="Seconds before the task is killed.")
@click.option(
    "--share",
    type=click.IntRange(1, MAX_SHARE),
    help="A new record's turns per round under fair order (default 1).",
)
@click.option("--wait", is_flag=True, help="Show progress until done; exit 1 if any failed.")
@click.pass_obj
def submit(
    obj: Context,
    targets: tuple[str, ...],
    from_git: bool,
    repository: str | None,
    description: str | None,
    tasks: tuple[str, ...],
    kwargs: Any,
    requirements: tuple[str, ...],
    platform: str | None,
    priority: int,
    timeout: float | None,
    share: int | None,
    wait: bool,
) -> None:
    """Submit FILE.json (a list of documents or {"docs": [...]}), or tasks for RECORD_ID, or
    with --git a record per commit of the checkout here.

    \b
    dirt submit test_data.json
    dirt submit r125 -d "revision 125" -t examples.simple -t examples.attachments
    dirt submit --git                 # HEAD, with the tasks of [ci] tasks
    dirt submit --git main~3..main -t ci.test
    """
    if from_git:
        if description or kwargs is not None or requirements or platform or timeout or priority:
            raise click.UsageError(
                "-d, --kwargs, --requires, --platform, --priority and --timeout do not go with "
                "--git: a commit's record takes its fields from the commit, its tasks' kwargs "
                "from [ci.kwargs]"
            )
        new_task_ids = submit_commits(obj, targets, tasks, repository)
        if wait:
            sys.exit(wait_for(obj.service, new_task_ids))
        return
    if repository:
        raise click.UsageError("--repository goes with --git")
    if len(targets) != 1:
        raise click.UsageError(
            "give one TARGET: a JSON file, or a record id with -t NAME (or --git [REV...])"
        )
    target = targets[0]
    if tasks:
        submission = obj.service.submit_tasks(
            target,
            tasks,
            description=description,
            kwargs=kwargs,
            requires=requirements,
            platform=platform,
            priority=priority,
            timeout=timeout,
            extra={"share": share} if share is not None else None,
        )
    else:
        if description or kwargs is not None or requirements or platform or timeout or share:
            raise click.UsageError(
                "-d, --kwargs, --requires, --platform and --timeout go with -t NAME (as does "
                "--share); a JSON file carries its own fields"
            )
        submission = obj.service.submit(_read_json_file(target))
    for record in submission.records:
        out.print(f"record {record.id} added")
    for task in submission.tasks:
        out.print(f"task {task.id} ({task.name}) added to {task.record_id}")
    if wait:
        sys.exit(wait_for(obj.service, [t.id for t in submission.tasks]))


def submit_commits(
    obj: Context, revs: tuple[str, ...], tasks: tuple[str, ...], repository: str | None
) -> list[str]:
    """`dirt submit --git`: a record per commit; returns the ids of the tasks added."""
    from dirt.sources.git import submit_documents

    settings = obj.settings
    if not tasks and not settings.ci.tasks:
        raise click.UsageError("name the tasks with -t NAME, or list them in [ci] tasks")
    docs = submit_documents(
        Path.cwd(), revs, settings.ci, tasks=tasks or None, repository=repository
    )
    taken = obj.service.submit_new(docs)
    added = {r.id for r in taken.records}
    for doc in docs:
        if doc.get("type") != "record":
            continue
        record_id = str(doc["_id"])
        if record_id in added:
            out.print(escape(f"record {record_id} added: {doc.get('description', '')}"))
        else:
            out.print(escape(f"record {record_id} exists: nothing added"))
    for task in taken.tasks:
        out.print(escape(f"task {task.id} ({task.name}) added to {task.record_id}"))
    return [t.id for t in taken.tasks]


def _read_json_file(target: str) -> Any:
    if target == "-":
        text = sys.stdin.read()
    else:
        path = Path(target)
        if not path.is_file():
            raise click.BadParameter(
                f"{target}: no such file; to add tasks to record {target}, give -t NAME",
                param_hint="'TARGET'",
            )
        text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmissionError([f"{target}: not valid JSON: {exc}"]) from None


def wait_for(service: Service, task_ids: list[str], poll: float = 0.1) -> int:
    """Progress bar until every task is finished; 1 when any failed."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task("waiting", total=len(task_ids))
        while True:
            found = service.tasks(task_ids)
            done = [t for t in found if t.state.finished]
            failed = [t for t in done if t.state is not TaskState.SUCCEEDED]
            running = sum(t.state is TaskState.RUNNING for t in found)
            progress.update(
                bar,
                completed=len(done),
                description=f"{running} running, {len(failed)} failed",
            )
            if len(done) == len(found):
                break
            time.sleep(poll)
    for task in failed:
        err.print(f"task {task.id} ({task.name}) {task.state.value}: {escape(str(task.reason))}")
    return 1 if failed else 0
