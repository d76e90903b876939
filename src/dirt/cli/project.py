"""`dirt create` (a new project folder) and `dirt demo` (the sample records on this machine)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from dirt.cli.base import out
from dirt.config import CHOICES


@click.command()
@click.argument("name")
@click.argument("db_name", required=False)
def create(name: str, db_name: str | None) -> None:
    """Make a project folder NAME with dirt.toml, README.md and example tasks."""
    from dirt.project import create_project

    path = create_project(Path(name), Path(name).name, db_name)
    out.print(escape(f"Created project {path.name} in {path.resolve()}"))
    out.print(escape(f"Next: cd {name} && dirt nodes add local && dirt serve"))


@click.command()
@click.argument("directory", default="dirt-demo")
@click.option("--once", is_flag=True, help="Stop when the demo's tasks are done.")
@click.option(
    "--isolation",
    type=click.Choice(CHOICES[("dispatch", "isolation")]),
    default=None,
    help="How tasks run on the node (default: [dispatch] isolation).",
)
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
            say=lambda text: out.print(escape(text)),
            web=not no_web,
            port=port,
        )
    )
