"""`dirt serve` (the dispatcher and the web server) and `dirt web` (the web server alone)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from dirt.cli.base import Context

F = TypeVar("F", bound=Callable[..., object])


def web_options(command: F) -> F:
    """--host and --port, as `dirt serve` and `dirt web` both take them."""
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


def say_url(url: str) -> None:
    click.echo(f"Web page and API at {url} (API docs at {url}docs)")


@click.command()
@click.option("--no-web", is_flag=True, help="Run the dispatcher only, no web server.")
@web_options
@click.pass_obj
def serve(obj: Context, no_web: bool, host: str | None, port: int | None) -> None:
    """Run the dispatcher and the web server until Ctrl-C."""
    from dirt.logs import setup_logging
    from dirt.server import serve as run_server

    setup_logging(obj.settings)
    sys.exit(run_server(obj.service, web=not no_web, host=host, port=port, on_web=say_url))


@click.command()
@web_options
@click.pass_obj
def web(obj: Context, host: str | None, port: int | None) -> None:
    """Run the web server only (pages, JSON API, _bulk_docs) until Ctrl-C."""
    from dirt.logs import setup_logging
    from dirt.server import serve_web

    setup_logging(obj.settings)
    sys.exit(serve_web(obj.service, host=host, port=port, on_web=say_url))
