"""API tokens: stored as sha256 digests; a token itself is never stored."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select

from dirt.db.schema import api_tokens


@dataclass
class TokenInfo:
    name: str
    created: float


def digest(token: str) -> str:
    """How a token is stored and looked up: its sha256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def insert_token(conn: Connection, name: str, token_sha256: str, created: float) -> None:
    conn.execute(insert(api_tokens).values(name=name, token_sha256=token_sha256, created=created))


def token_name(conn: Connection, token_sha256: str) -> str | None:
    """The name of the token with this digest, or None."""
    query = select(api_tokens.c.name).where(api_tokens.c.token_sha256 == token_sha256)
    return conn.execute(query).scalar_one_or_none()


def name_taken(conn: Connection, name: str) -> bool:
    query = select(api_tokens.c.id).where(api_tokens.c.name == name)
    return conn.execute(query).first() is not None


def list_tokens(conn: Connection) -> list[TokenInfo]:
    query = select(api_tokens.c.name, api_tokens.c.created).order_by(api_tokens.c.name)
    return [TokenInfo(row.name, row.created) for row in conn.execute(query)]


def delete_token(conn: Connection, name: str) -> bool:
    return conn.execute(delete(api_tokens).where(api_tokens.c.name == name)).rowcount == 1
