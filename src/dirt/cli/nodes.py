"""`dirt nodes add|list|enable|disable|remove` and the original's `dirt updatenodes`."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from dirt.cli.base import Context, ago, err, out
from dirt.errors import DirtError
from dirt.views import nodes_view, short_master, shown_node


def add_nodes(
    obj: Context, hosts: tuple[str, ...], slots: int | None, ssh: dict[str, Any] | None = None
) -> None:
    """Probe `hosts` in parallel and store each that answers; exit 1 when any did not."""
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
                progress.console.print(f"[red]✗[/] {escape(host)}: {escape(str(error))}")
                continue
            # --slots, else slots in the host's [nodes.hosts."HOST"] table, else as before.
            own_slots = slots if slots is not None else settings.nodes.host(host).slots
            node = obj.service.save_node(host, sys_info, own_slots, ssh)
            info = node.sys_info
            progress.console.print(
                f"[green]✓[/] {escape(host)}: {info.get('hostname')} {info.get('system')} "
                f"{info.get('architecture')}, Python {info.get('python_version')}, "
                f"{node.slots} slot(s)"
            )
    if failures:
        sys.exit(1)


def add_batch_nodes(
    obj: Context, addresses: list[str], max_jobs: int | None, sbatch_args: str, workdir: str | None
) -> None:
    """Check each batch node against its cluster and store it; exit 1 when any failed."""
    from dirt.batch.nodes import describe_batch_node

    failures = 0
    for address in addresses:
        try:
            settings, info = describe_batch_node(
                address, obj.settings, max_jobs=max_jobs, sbatch_args=sbatch_args, workdir=workdir
            )
            node = obj.service.save_batch_node(settings, info)
        except DirtError as exc:
            failures += 1
            err.print(f"[red]✗[/] {escape(address)}: {escape(str(exc))}")
            continue
        out.print(
            f"[green]✓[/] {escape(node.address)}: Slurm partition {escape(settings.partition)}, "
            f"{info.get('node_count')} node(s), {info.get('cpus_total')} CPUs, "
            f"up to {node.slots} job(s) at once"
        )
    if failures:
        sys.exit(1)


@click.group()
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
@click.option(
    "--max-jobs",
    type=click.IntRange(1),
    help="Batch nodes (slurm:PARTITION): jobs queued or running in Slurm at once (default 100).",
)
@click.option(
    "--sbatch-args",
    default="",
    help='Batch nodes: more sbatch options for every job, e.g. "--account=phys --mem=4G".',
)
@click.option(
    "--workdir",
    default=None,
    help="Batch nodes: folder for the jobs' output files, shared with the compute hosts "
    "(default ~/.dirt/slurm, on the login host when there is one).",
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
    max_jobs: int | None,
    sbatch_args: str,
    workdir: str | None,
) -> None:
    """Probe HOST... ([user@]host[:port], an ssh_config alias, or local) and add or refresh
    them, in parallel. The SSH options given are stored with each node and used whenever the
    dispatcher connects to it; they win over the host's [nodes.hosts."HOST"] table in dirt.toml,
    which wins over [nodes].

    \b
    dirt nodes add build1 build2.example.org --user ci --identity ~/.ssh/ci_ed25519
    dirt nodes add root@10.0.0.7:2222 --python /opt/python3.12/bin/python3

    A batch node runs each task as one job of a batch system (docs/batch.md):

    \b
    dirt nodes add slurm:debug --max-jobs 50 --sbatch-args "--account=phys --mem=4G"
    dirt nodes add slurm:gpu@login.cluster.example.org
    """
    from dirt.documents.addresses import is_batch_address

    batch = [h for h in hosts if is_batch_address(h)]
    if batch:
        add_batch_nodes(obj, batch, max_jobs, sbatch_args, workdir)
        hosts = tuple(h for h in hosts if h not in batch)
        if not hosts:
            return
    elif max_jobs is not None or sbatch_args or workdir:
        raise click.UsageError("--max-jobs, --sbatch-args and --workdir are for batch nodes")
    ssh = {
        "user": user,
        "port": port,
        "identity_file": str(Path(identity).expanduser().resolve()) if identity else None,
        "ssh_config": str(Path(ssh_config).expanduser().resolve()) if ssh_config else None,
        "python": python,
        "host_key_checking": "strict" if strict_host_keys else None,
    }
    add_nodes(obj, hosts, slots, ssh)


@click.command("updatenodes")
@click.argument("hosts", nargs=-1, required=True)
@click.option("--slots", type=click.IntRange(1), help="Tasks run at once (default: cpu_count).")
@click.pass_obj
def updatenodes(obj: Context, hosts: tuple[str, ...], slots: int | None) -> None:
    """The original's name for `dirt nodes add`."""
    add_nodes(obj, hosts, slots)


@nodes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def nodes_list(obj: Context, as_json: bool) -> None:
    """Every node with its state, slots, load, last error and the dispatcher driving it."""
    show = obj.settings.nodes.show_environ
    found = obj.service.nodes()
    running = obj.service.running_per_node()
    if as_json:
        click.echo(json.dumps(nodes_view(found, running, show), indent=2))
        return
    if not found:
        out.print(
            "no nodes; add one with `dirt nodes add local` or `dirt nodes add HOST`, or start an "
            "agent: `python3 agent.py URL --token TOKEN` (URL/agent.py)"
        )
        return
    table = Table(
        "node",
        "kind",
        "enabled",
        "online",
        "slots",
        "load",
        "system",
        "driven by",
        "last seen",
        "last error",
    )
    for n in (shown_node(n, show) for n in found):
        info = n.sys_info
        table.add_row(
            escape(n.address),
            n.kind.value,
            "yes" if n.enabled else "[yellow]no (disabled)[/]",
            "yes" if n.online else "[red]no (offline)[/]",
            f"{running.get(n.address, 0)}/{n.slots}",
            " ".join(f"{x:.2f}" for x in (n.load or [])[:1]) or "-",
            escape(f"{info.get('system', '?')} {info.get('architecture', '?')}"),
            escape(short_master(n.driver)),
            ago(n.last_seen),
            escape((n.last_error or "")[:60]),
        )
    out.print(table)


@nodes.command("enable")
@click.argument("host")
@click.pass_obj
def nodes_enable(obj: Context, host: str) -> None:
    """Let HOST take tasks again."""
    obj.service.set_node_enabled(host, True)
    out.print(f"node {escape(host)} enabled")


@nodes.command("disable")
@click.argument("host")
@click.pass_obj
def nodes_disable(obj: Context, host: str) -> None:
    """Give HOST no new tasks (running ones finish)."""
    obj.service.set_node_enabled(host, False)
    out.print(f"node {escape(host)} disabled")


@nodes.command("remove")
@click.argument("host")
@click.pass_obj
def nodes_remove(obj: Context, host: str) -> None:
    """Forget HOST."""
    obj.service.remove_node(host)
    out.print(f"node {escape(host)} removed")
