"""The `dirt` command: parse, call the service, print, return an exit code. No logic here.

One module per command group; this one assembles them under `main` (the console script).
"""

from __future__ import annotations

import click

from dirt import __version__
from dirt.cli.agent import agent
from dirt.cli.audit import audit
from dirt.cli.base import Context, DirtGroup
from dirt.cli.control import cancel, retry
from dirt.cli.dispatchers import dispatchers
from dirt.cli.hook import hook
from dirt.cli.nodes import nodes, updatenodes
from dirt.cli.notify import notify
from dirt.cli.output import fetch, logs
from dirt.cli.project import create, demo
from dirt.cli.queue import queue
from dirt.cli.serve import serve, web
from dirt.cli.status import status
from dirt.cli.submit import submit
from dirt.cli.token import token
from dirt.cli.watch import watch

__all__ = ["main"]


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


COMMANDS = (
    create,
    submit,
    nodes,
    updatenodes,
    serve,
    web,
    dispatchers,
    agent,
    token,
    status,
    queue,
    logs,
    fetch,
    cancel,
    retry,
    hook,
    watch,
    notify,
    audit,
    demo,
)
for command in COMMANDS:
    main.add_command(command)
