"""The `dirt` command: parse, call the service, print, return an exit code. No logic here."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dirt import __version__
from dirt.config import Settings, load_settings
from dirt.errors import DirtError, SubmissionError
from dirt.models import TaskState

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class Context:
    """Loads settings and opens the store only when a command needs them."""

    def __init__(self, project: str | None) -> None:
        self.project = project
        self._settings: Settings | None = None
        self._service: Any = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.project)
        return self._settings

    @property
    def service(self) -> Any:
        if self._service is None:
            from dirt.service import Service

            self._service = Service(self.settings)
        return self._service


class DirtGroup(click.Group):
    """Turns a DirtError anywhere into a clear message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DirtError as exc:
            # escape: messages name TOML tables ([nodes.hosts."build1"]), not rich markup
            message = escape(str(exc))
            err.print(
                f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True
            )
            sys.exit(2)


@click.group(cls=DirtGroup)
@click.version_option(__version__, prog_name="dirt")
@click.option(
    "--project",
    envvar="DIRT_PROJECT",
    type=click.Path(file_okay=False),
    help="The project folder (default: found by walking up from here to a dirt.toml).",
)
@click.pass_context
def main(ctx: click.Context, project: str | None) -> None:
    """dirt: oversight and tracking of remotely executed jobs."""
    ctx.obj = Context(project)


# ---- create --------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.argument("db_name", required=False)
def create(name: str, db_name: str | None) -> None:
    """Make a project folder NAME with dirt.toml, README.md and example tasks."""
    from dirt.project import create_project

    path = create_project(Path(name), Path(name).name, db_name)
    out.print(f"Created project {path.name} in {path.resolve()}")
    out.print(f"Next: cd {name} && dirt nodes add local && dirt serve")


# ---- submit --------------------------------------------------------------------------------


def _parse_json_option(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise SubmissionError([f"{what} is not valid JSON: {exc}"]) from None


@main.command()
@click.argument("target")
@click.option("-d", "--description", help="The record's description (when it is new).")
@click.option("-t", "--task", "tasks", multiple=True, help="A task name; repeat for more.")
@click.option("--kwargs", help="JSON object passed to every task given with -t.")
@click.option(
    "--requires",
    "requirements",
    multiple=True,
    help="A requirement, e.g. 'architecture is x86_64'; repeat for more.",
)
@click.option("--platform", help="linux, osx or windows.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--timeout", type=float, help="Seconds before the task is killed.")
@click.option("--wait", is_flag=True, help="Show progress until done; exit 1 if any failed.")
@click.pass_obj
def submit(
    obj: Context,
    target: str,
    description: str | None,
    tasks: tuple[str, ...],
    kwargs: str | None,
    requirements: tuple[str, ...],
    platform: str | None,
    priority: int,
    timeout: float | None,
    wait: bool,
) -> None:
    """Submit FILE.json (a list of documents or {"docs": [...]}), or tasks for RECORD_ID.

    \b
    dirt submit test_data.json
    dirt submit r125 -d "revision 125" -t examples.simple -t examples.attachments
    """
    if tasks:
        parsed_kwargs = _parse_json_option(kwargs, "--kwargs")
        submission = obj.service.submit_tasks(
            target,
            tasks,
            description=description,
            kwargs=parsed_kwargs,
            requires=requirements,
            platform=platform,
            priority=priority,
            timeout=timeout,
        )
    else:
        if description or kwargs or requirements or platform or timeout:
            raise SubmissionError(
                [
                    "-d, --kwargs, --requires, --platform and --timeout go with "
                    "-t NAME; a JSON file carries its own fields"
                ]
            )
        submission = obj.service.submit(_read_json_file(target))
    for record in submission.records:
        out.print(f"record {record.id} added")
    for task in submission.tasks:
        out.print(f"task {task.id} ({task.name}) added to {task.record_id}")
    if wait:
        sys.exit(_wait_for(obj.service, [t.id for t in submission.tasks]))


def _read_json_file(target: str) -> Any:
    if target == "-":
        text = sys.stdin.read()
    else:
        path = Path(target)
        if not path.is_file():
            raise SubmissionError(
                [f"{target}: no such file; to add tasks to record {target}, give -t NAME"]
            )
        text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmissionError([f"{target}: not valid JSON: {exc}"]) from None


def _wait_for(service: Any, task_ids: list[str], poll: float = 0.1) -> int:
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
        err.print(f"task {task.id} ({task.name}) {task.state.value}: {task.reason}")
    return 1 if failed else 0


# ---- nodes ---------------------------------------------------------------------------------


def _add_nodes(
    obj: Context, hosts: tuple[str, ...], slots: int | None, ssh: dict[str, Any] | None = None
) -> None:
    from dirt.dispatch.runner import probe
    from dirt.documents import parse_address

    for host in hosts:
        parse_address(host)
    settings = obj.settings
    failures = 0
    known = {n.address: n.ssh for n in obj.service.nodes()}
    ssh = {k: v for k, v in (ssh or {}).items() if v not in (None, "")}

    def one(host: str) -> tuple[str, dict[str, Any] | None, str | None]:
        options = {**known.get(host, {}), **ssh}
        try:
            info = probe(host, settings.nodes, settings.nodes.connect_timeout + 20, options)
            return host, info, None
        except DirtError as exc:
            return host, None, str(exc)

    columns = (TextColumn("probing nodes"), BarColumn(), MofNCompleteColumn())
    with (
        Progress(*columns, console=err, transient=True) as progress,
        ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool,
    ):
        bar = progress.add_task("probe", total=len(hosts))
        for host, sys_info, error in pool.map(one, hosts):
            progress.advance(bar)
            if sys_info is None:
                failures += 1
                progress.console.print(f"[red]✗[/] {host}: {error}")
                continue
            # --slots, else slots in the host's [nodes.hosts."HOST"] table, else as before.
            own_slots = slots if slots is not None else settings.nodes.host(host).slots
            node = obj.service.save_node(host, sys_info, own_slots, ssh)
            info = node.sys_info
            progress.console.print(
                f"[green]✓[/] {host}: {info.get('hostname')} {info.get('system')} "
                f"{info.get('architecture')}, Python {info.get('python_version')}, "
                f"{node.slots} slot(s)"
            )
    if failures:
        sys.exit(1)


@main.group()
def nodes() -> None:
    """Execution nodes: add, list, enable, disable, remove."""


@nodes.command("add")
@click.argument("hosts", nargs=-1, required=True)
@click.option(
    "--slots",
    type=click.IntRange(1),
    help='Tasks run at once (default: slots in [nodes.hosts."HOST"], else cpu_count).',
)
@click.option("--user", help="SSH login name (default: dirt.toml's, or ssh's own).")
@click.option("--port", type=click.IntRange(1, 65535), help="SSH port.")
@click.option("--identity", type=click.Path(dir_okay=False), help="SSH private key file.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="ssh_config file (ssh -F).")
@click.option("--python", help="The node's Python interpreter (default: python3).")
@click.option(
    "--strict-host-keys",
    is_flag=True,
    default=None,
    help="Refuse hosts whose key is not in known_hosts (default: accept new keys once).",
)
@click.pass_obj
def nodes_add(
    obj: Context,
    hosts: tuple[str, ...],
    slots: int | None,
    user: str | None,
    port: int | None,
    identity: str | None,
    ssh_config: str | None,
    python: str | None,
    strict_host_keys: bool | None,
) -> None:
    """Probe HOST... ([user@]host[:port], an ssh_config alias, or local) and add or refresh
    them, in parallel. The SSH options given are stored with each node and used whenever the
    dispatcher connects to it; they win over the host's [nodes.hosts."HOST"] table in dirt.toml,
    which wins over [nodes].

    \b
    dirt nodes add build1 build2.example.org --user ci --identity ~/.ssh/ci_ed25519
    dirt nodes add root@10.0.0.7:2222 --python /opt/python3.12/bin/python3
    """
    ssh = {
        "user": user,
        "port": port,
        "identity_file": str(Path(identity).expanduser().resolve()) if identity else None,
        "ssh_config": str(Path(ssh_config).expanduser().resolve()) if ssh_config else None,
        "python": python,
        "host_key_checking": "strict" if strict_host_keys else None,
    }
    _add_nodes(obj, hosts, slots, ssh)


@main.command("updatenodes")
@click.argument("hosts", nargs=-1, required=True)
@click.option("--slots", type=click.IntRange(1), help="Tasks run at once (default: cpu_count).")
@click.pass_obj
def updatenodes(obj: Context, hosts: tuple[str, ...], slots: int | None) -> None:
    """The original's name for `dirt nodes add`."""
    _add_nodes(obj, hosts, slots)


@nodes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def nodes_list(obj: Context, as_json: bool) -> None:
    """Every node with its state, slots, load and last error."""
    found = obj.service.nodes()
    running = obj.service.running_per_node()
    if as_json:
        docs = [{**n.to_doc(), "running": running.get(n.address, 0)} for n in found]
        click.echo(json.dumps(docs, indent=2))
        return
    if not found:
        out.print("no nodes; add one with `dirt nodes add local` or `dirt nodes add HOST`")
        return
    table = Table("node", "enabled", "online", "slots", "load", "system", "last seen", "last error")
    for n in found:
        info = n.sys_info
        table.add_row(
            n.address,
            "yes" if n.enabled else "[yellow]no (disabled)[/]",
            "yes" if n.online else "[red]no (offline)[/]",
            f"{running.get(n.address, 0)}/{n.slots}",
            " ".join(f"{x:.2f}" for x in (n.load or [])[:1]) or "-",
            f"{info.get('system', '?')} {info.get('architecture', '?')}",
            _ago(n.last_seen),
            (n.last_error or "")[:60],
        )
    out.print(table)


@nodes.command("enable")
@click.argument("host")
@click.pass_obj
def nodes_enable(obj: Context, host: str) -> None:
    """Let HOST take tasks again."""
    obj.service.set_node_enabled(host, True)
    out.print(f"node {host} enabled")


@nodes.command("disable")
@click.argument("host")
@click.pass_obj
def nodes_disable(obj: Context, host: str) -> None:
    """Give HOST no new tasks (running ones finish)."""
    obj.service.set_node_enabled(host, False)
    out.print(f"node {host} disabled")


@nodes.command("remove")
@click.argument("host")
@click.pass_obj
def nodes_remove(obj: Context, host: str) -> None:
    """Forget HOST."""
    obj.service.remove_node(host)
    out.print(f"node {host} removed")


# ---- serve ---------------------------------------------------------------------------------


def _web_options(command: Any) -> Any:
    command = click.option(
        "--port",
        type=click.IntRange(0, 65535),
        envvar="DIRT_WEB_PORT",
        help="Web server port (default: [web] port, 8080; 0 picks a free one).",
    )(command)
    return click.option(
        "--host",
        envvar="DIRT_WEB_HOST",
        help="Web server address (default: [web] host, 127.0.0.1).",
    )(command)


def _say_url(url: str) -> None:
    click.echo(f"Web page and API at {url} (API docs at {url}docs)")


@main.command()
@click.option("--no-web", is_flag=True, help="Run the dispatcher only, no web server.")
@_web_options
@click.pass_obj
def serve(obj: Context, no_web: bool, host: str | None, port: int | None) -> None:
    """Run the dispatcher and the web server until Ctrl-C."""
    from dirt.logs import setup_logging
    from dirt.server import serve as run_server

    setup_logging(obj.settings)
    sys.exit(run_server(obj.service, web=not no_web, host=host, port=port, on_web=_say_url))


@main.command()
@_web_options
@click.pass_obj
def web(obj: Context, host: str | None, port: int | None) -> None:
    """Run the web server only (pages, JSON API, _bulk_docs) until Ctrl-C."""
    from dirt.logs import setup_logging
    from dirt.server import serve_web

    setup_logging(obj.settings)
    sys.exit(serve_web(obj.service, host=host, port=port, on_web=_say_url))


# ---- tokens --------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """API tokens for writing over HTTP (and reading, when auth.read = "token")."""


@token.command("create")
@click.argument("name")
@click.pass_obj
def token_create(obj: Context, name: str) -> None:
    """Make token NAME and print it once; only its sha256 is stored."""
    made = obj.service.create_token(name)
    click.echo(made)
    err.print(
        f"token {name} made; it is shown only now. Send it as 'Authorization: Bearer TOKEN'.",
        highlight=False,
    )


@token.command("list")
@click.pass_obj
def token_list(obj: Context) -> None:
    """The names of the tokens and when they were made."""
    found = obj.service.tokens()
    if not found:
        out.print("no tokens; make one with `dirt token create NAME`")
    for info in found:
        out.print(f"{info.name}  made {_when(info.created)}")


@token.command("revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(obj: Context, name: str) -> None:
    """Delete token NAME: it stops working at once."""
    obj.service.revoke_token(name)
    out.print(f"token {name} revoked")


# ---- status --------------------------------------------------------------------------------


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _ago(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    seconds = max(0, time.time() - epoch)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return _when(epoch)


STATE_STYLE = {
    "waiting": "dim",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}


@main.command()
@click.argument("record_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.pass_obj
def status(obj: Context, record_id: str | None, as_json: bool, limit: int) -> None:
    """Records newest first with task counts, or one record's tasks."""
    if record_id is None:
        _status_list(obj, as_json, limit)
    else:
        _status_record(obj, record_id, as_json)


def _status_list(obj: Context, as_json: bool, limit: int) -> None:
    summaries = obj.service.record_page(limit=limit)
    if as_json:
        docs = [
            {
                "_id": s.record.id,
                "description": s.record.description,
                "created": s.record.created,
                "ntasks": s.ntasks,
                "counts": s.counts,
            }
            for s in summaries
        ]
        click.echo(json.dumps(docs, indent=2))
        return
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
            f"[{style}]{s.counts[state]} {state}[/]"
            for state, style in STATE_STYLE.items()
            if s.counts[state]
        )
        table.add_row(
            s.record.id,
            str(s.ntasks),
            states or "-",
            _when(s.record.created),
            s.record.description.splitlines()[0] if s.record.description else "",
        )
    out.print(table)


def _status_record(obj: Context, record_id: str, as_json: bool) -> None:
    detail = obj.service.record_detail(record_id)
    if as_json:
        doc = {
            "record": detail.record.to_doc(),
            "tasks": [
                {
                    "_id": t.id,
                    "name": t.name,
                    "state": t.state.value,
                    "node": t.node,
                    "created": t.created,
                    "started": t.started,
                    "completed": t.completed,
                    "reason": t.reason or t.waiting_reason,
                    "results": t.results,
                    "output": t.output,
                    "attempts": [a.__dict__ for a in detail.attempts.get(t.id, [])],
                    "attachments": [
                        {"filename": a.filename, "link_name": a.link_name, "size": a.size}
                        for a in detail.attachments.get(t.id, [])
                    ],
                }
                for t in detail.tasks
            ],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    record = detail.record
    out.print(f"[bold]{record.id}[/]  {record.description}")
    for key, value in record.extra.items():
        out.print(f"  {key}: {value}")
    table = Table()
    table.add_column("task", overflow="fold")
    for column in ("node", "state", "duration", "tries"):
        table.add_column(column)
    table.add_column("reason")
    for t in detail.tasks:
        duration = f"{t.duration:.2f} s" if t.duration is not None else "-"
        reason = (t.reason or t.waiting_reason or "").strip()
        table.add_row(
            f"{t.name}\n[dim]{t.id}[/]",
            t.node or "-",
            f"[{STATE_STYLE[t.state.value]}]{t.state.value}[/]",
            duration,
            str(t.attempts),
            reason.splitlines()[-1] if reason else "",
        )
    out.print(table)
    for t in detail.tasks:
        for a in detail.attachments.get(t.id, []):
            out.print(f"  {t.id}: attachment {a.link_name} ({a.filename}, {a.size} bytes)")
    # Attempts are worth a table once a task was tried more than once or lost a node.
    retried = {
        t.id
        for t in detail.tasks
        if len(detail.attempts.get(t.id, [])) > 1
        or any(a.outcome == "lost" for a in detail.attempts.get(t.id, []))
    }
    tried = [(t, a) for t in detail.tasks if t.id in retried for a in detail.attempts[t.id]]
    if tried:
        attempts_table = Table("task", "try", "node", "started", "ended", "outcome")
        attempts_table.add_column("reason")
        for t, a in tried:
            reason = (a.reason or "").strip()
            attempts_table.add_row(
                f"[dim]{t.id}[/]",
                str(a.number),
                a.node,
                _when(a.started),
                _when(a.completed),
                a.outcome or "running",
                reason.splitlines()[-1] if reason else "",
            )
        out.print(attempts_table)


# ---- cancel and retry ----------------------------------------------------------------------


@main.command()
@click.argument("task_ids", nargs=-1, required=True)
@click.pass_obj
def cancel(obj: Context, task_ids: tuple[str, ...]) -> None:
    """Cancel TASK_ID...: a waiting task at once, a running one is killed on its node."""
    for task_id in task_ids:
        task = obj.service.cancel_task(task_id)
        if task.state is TaskState.CANCELLED:
            out.print(f"task {task_id} cancelled")
        else:
            out.print(f"task {task_id}: cancel requested; it is killed on {task.node}")


@main.command()
@click.argument("target")
@click.option("--failed", is_flag=True, help="TARGET is a record: retry all its failed tasks.")
@click.pass_obj
def retry(obj: Context, target: str, failed: bool) -> None:
    """Run finished task TARGET again, or with --failed every failed task of record TARGET."""
    if failed:
        retried = obj.service.retry_failed(target)
        out.print(f"{len(retried)} failed task(s) of {target} waiting again")
        for task_id in retried:
            out.print(f"  {task_id}")
    else:
        obj.service.retry_task(target)
        out.print(f"task {target} waiting again")


# ---- demo ----------------------------------------------------------------------------------


@main.command()
@click.argument("directory", default="dirt-demo")
@click.option("--once", is_flag=True, help="Stop when the demo's tasks are done.")
@click.option("--isolation", type=click.Choice(["process", "thread"]), default=None)
@click.option("--no-web", is_flag=True, help="Do not start the web server.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Web server port (default: [web] port; a free one when that is taken).",
)
def demo(directory: str, once: bool, isolation: str | None, no_web: bool, port: int | None) -> None:
    """Make (or reuse) a demo project, add this machine as a node, run the sample records."""
    from dirt.demo import run_demo

    sys.exit(
        run_demo(
            Path(directory),
            once=once,
            isolation=isolation,
            say=out.print,
            web=not no_web,
            port=port,
        )
    )


if __name__ == "__main__":
    main()
