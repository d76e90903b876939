"""API tokens: stored as sha256 digests with their scope; a token itself is never stored."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select

from dirt.db.schema import api_tokens
from dirt.models import TokenScope


@dataclass(frozen=True)
class TokenInfo:
    name: str
    created: float
    scope: TokenScope = TokenScope.API


def digest(token: str) -> str:
    """How a token is stored and looked up: its sha256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def insert_token(
    conn: Connection, name: str, token_sha256: str, created: float, scope: TokenScope
) -> None:
    conn.execute(
        insert(api_tokens).values(
            name=name, token_sha256=token_sha256, created=created, scope=scope.value
        )
    )


def _info(name: str, created: float, scope: str) -> TokenInfo:
    try:
        known = TokenScope(scope)
    except ValueError:  # a scope of a newer dirt: it grants nothing here
        known = TokenScope.READ
    return TokenInfo(name, created, known)


def find_token(conn: Connection, token_sha256: str) -> TokenInfo | None:
    """The token with this digest, or None."""
    query = select(api_tokens.c.name, api_tokens.c.created, api_tokens.c.scope).where(
        api_tokens.c.token_sha256 == token_sha256
    )
    row = conn.execute(query).first()
    return _info(row.name, row.created, row.scope) if row is not None else None


def name_taken(conn: Connection, name: str) -> bool:
    query = select(api_tokens.c.id).where(api_tokens.c.name == name)
    return conn.execute(query).first() is not None


def list_tokens(conn: Connection) -> list[TokenInfo]:
    query = select(api_tokens.c.name, api_tokens.c.created, api_tokens.c.scope).order_by(
        api_tokens.c.name
    )
    return [_info(row.name, row.created, row.scope) for row in conn.execute(query)]


def delete_token(conn: Connection, name: str) -> bool:
    return conn.execute(delete(api_tokens).where(api_tokens.c.name == name)).rowcount == 1
