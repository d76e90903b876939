"""`dirt hook install`: the post-receive hook that tells a dirt server about every push."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import click
from rich.markup import escape

from dirt.cli.base import err, out

HOOK_PATH = "/hooks/git"


def hook_url(url: str) -> str:
    """The server's address as given, with /hooks/git added when only the server is named."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=HOOK_PATH))
    return url


@click.group()
def hook() -> None:
    """The git hook that makes a record per push."""


@hook.command("install")
@click.argument("git_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--url",
    required=True,
    help="The dirt server: http://HOST:PORT (its /hooks/git is used) or the full hook URL.",
)
@click.option(
    "--token-env",
    metavar="VAR",
    help="The environment variable (of the git server's hook) holding a dirt API token.",
)
@click.option(
    "--repository",
    metavar="URL",
    help="What nodes clone (default: this repository's folder).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a post-receive hook that is not dirt's (kept as post-receive.before-dirt).",
)
def hook_install(
    git_dir: str, url: str, token_env: str | None, repository: str | None, force: bool
) -> None:
    """Write a post-receive hook into repository GIT_DIR (bare or not): after each push it
    posts every updated branch's new head to the dirt server. A push never waits for dirt or
    fails because of it: when the server is down the hook says so and keeps the push, and
    sends it with the next push.

    \b
    dirt hook install /srv/git/project.git --url http://ci.example.org:8080 --token-env DIRT_TOKEN
    """
    from dirt.sources.hook import install_hook

    target_url = hook_url(url)
    path = install_hook(
        git_dir, target_url, token_env=token_env, repository=repository, force=force
    )
    out.print(escape(f"hook installed: {path}"))
    out.print(escape(f"each push is posted to {target_url}"))
    if token_env and not os.environ.get(token_env):
        err.print(
            escape(
                f"note: ${token_env} is not set here; set it where git runs the hook (the git "
                "server's environment), to a token from `dirt token create NAME`"
            ),
            highlight=False,
        )
