"""`dirt agent URL`: the pull-mode agent (the code served at /agent.py) from an installed dirt."""

from __future__ import annotations

import sys

import click


@click.command(
    "agent",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def agent(args: tuple[str, ...]) -> None:
    """Run a pull-mode agent for the master at URL: it registers this host as a node, fetches
    tasks over HTTP(S) and runs each in a process of its own. Needs no project here.

    \b
    dirt agent URL --token TOKEN [--slots N] [--name NAME] [--once] [--ca FILE]
    dirt agent --help
    """
    from dirt.remote.http_main import main

    sys.exit(main(list(args), prog="dirt agent"))
