"""`dirt token create|list|revoke`: API tokens for writing (and reading) over HTTP."""

from __future__ import annotations

import click
from rich.markup import escape

from dirt.cli.base import Context, err, out, when


@click.group()
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
        f"token {escape(name)} made; it is shown only now. "
        "Send it as 'Authorization: Bearer TOKEN'.",
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
        out.print(f"{escape(info.name)}  made {when(info.created)}")


@token.command("revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(obj: Context, name: str) -> None:
    """Delete token NAME: it stops working at once."""
    obj.service.revoke_token(name)
    out.print(f"token {escape(name)} revoked")
