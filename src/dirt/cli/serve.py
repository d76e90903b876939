"""`dirt serve` (the dispatcher and the web server) and `dirt web` (the web server alone)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from dirt.cli.base import Context

F = TypeVar("F", bound=Callable[..., object])


def web_options(command: F) -> F:
    """--host, --port, --certfile, --keyfile and --workers, as `dirt serve` and `dirt web`
    both take them."""
    for option in (
        click.option(
            "--workers",
            type=click.IntRange(1, 64),
            envvar="DIRT_WEB_WORKERS",
            help="Web server processes (default: [web] workers, 1).",
        ),
        click.option(
            "--keyfile",
            type=click.Path(dir_okay=False, resolve_path=True),
            envvar="DIRT_WEB_KEYFILE",
            help="Serve HTTPS: the certificate's private key, PEM (default: [web] keyfile).",
        ),
        click.option(
            "--certfile",
            type=click.Path(dir_okay=False, resolve_path=True),
            envvar="DIRT_WEB_CERTFILE",
            help="Serve HTTPS: the certificate (chain), PEM (default: [web] certfile).",
        ),
        click.option(
            "--port",
            type=click.IntRange(0, 65535),
            envvar="DIRT_WEB_PORT",
            help="Web server port (default: [web] port, 8080; 0 picks a free one).",
        ),
        click.option(
            "--host",
            envvar="DIRT_WEB_HOST",
            help="Web server address (default: [web] host, 127.0.0.1).",
        ),
    ):
        command = option(command)
    return command


def prepare_web(
    obj: Context, certfile: str | None, keyfile: str | None, workers: int | None
) -> None:
    """Apply the web flags (they win over dirt.toml and the DIRT_WEB_* variables the flags read
    themselves), then set up logging as the settings now say."""
    from dirt.logs import setup_logging

    web = obj.settings.web
    if certfile is not None:
        web.certfile = certfile
    if keyfile is not None:
        web.keyfile = keyfile
    if workers is not None:
        web.workers = workers
    setup_logging(obj.settings)


def say_url(url: str) -> None:
    click.echo(f"Web page and API at {url} (API docs at {url}docs)")


@click.command()
@click.option("--no-web", is_flag=True, help="Run the dispatcher only, no web server.")
@web_options
@click.pass_obj
def serve(
    obj: Context,
    no_web: bool,
    host: str | None,
    port: int | None,
    certfile: str | None,
    keyfile: str | None,
    workers: int | None,
) -> None:
    """Run the dispatcher and the web server until Ctrl-C."""
    from dirt.server import serve as run_server

    prepare_web(obj, certfile, keyfile, workers)
    sys.exit(run_server(obj.service, web=not no_web, host=host, port=port, on_web=say_url))


@click.command()
@web_options
@click.pass_obj
def web(
    obj: Context,
    host: str | None,
    port: int | None,
    certfile: str | None,
    keyfile: str | None,
    workers: int | None,
) -> None:
    """Run the web server only (pages, JSON API, _bulk_docs) until Ctrl-C."""
    from dirt.server import serve_web

    prepare_web(obj, certfile, keyfile, workers)
    sys.exit(serve_web(obj.service, host=host, port=port, on_web=say_url))
