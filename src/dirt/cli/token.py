"""`dirt token create|list|revoke`: API tokens for reading and writing over HTTP."""

from __future__ import annotations

import click
from rich.markup import escape

from dirt.cli.base import Context, err, out, when
from dirt.models import TokenScope


@click.group()
def token() -> None:
    """API tokens for HTTP: scope api reads and writes, scope read only reads, scope agent
    only runs pull-mode agents."""


@token.command("create")
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice([s.value for s in TokenScope]),
    default=TokenScope.API.value,
    show_default=True,
    help="api: read and write (submit, cancel, retry, nodes); read: read only; agent: only "
    "register pull-mode agents and run their jobs.",
)
@click.pass_obj
def token_create(obj: Context, name: str, scope: str) -> None:
    """Make token NAME and print it once; only its sha256 is stored."""
    from dirt.documents import token_scope

    made = obj.service.create_token(name, token_scope(scope))
    click.echo(made)
    use = (
        "Give it to agents: `python3 agent.py URL --token TOKEN` (agent.py from URL/agent.py)."
        if scope == "agent"
        else "Send it as 'Authorization: Bearer TOKEN'."
    )
    err.print(
        f"token {escape(name)} (scope {scope}) made; it is shown only now. {use}", highlight=False
    )


@token.command("list")
@click.pass_obj
def token_list(obj: Context) -> None:
    """The names of the tokens, their scopes and when they were made."""
    found = obj.service.tokens()
    if not found:
        out.print("no tokens; make one with `dirt token create NAME`")
    for info in found:
        out.print(f"{escape(info.name)}  scope {info.scope.value}  made {when(info.created)}")


@token.command("revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(obj: Context, name: str) -> None:
    """Delete token NAME: it stops working at once."""
    obj.service.revoke_token(name)
    out.print(f"token {escape(name)} revoked")
