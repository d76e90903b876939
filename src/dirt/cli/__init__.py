"""The `dirt` command: parse, call the service, print, return an exit code. No logic here.

One module per command group; this one assembles them under `main` (the console script).
"""

from __future__ import annotations

import click

from dirt import __version__
from dirt.cli.base import Context, DirtGroup
from dirt.cli.control import cancel, retry
from dirt.cli.dispatchers import dispatchers
from dirt.cli.nodes import nodes, updatenodes
from dirt.cli.project import create, demo
from dirt.cli.serve import serve, web
from dirt.cli.status import status
from dirt.cli.submit import submit
from dirt.cli.token import token

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


for command in (
    create,
    submit,
    nodes,
    updatenodes,
    serve,
    web,
    dispatchers,
    token,
    status,
    cancel,
    retry,
    demo,
):
    main.add_command(command)
