"""What a read may show of a node's sys_info: environment names without their values, and
passwords masked wherever else they hide (URLs with credentials, command-line options, keys
named like secrets). Pure functions; `dirt.views` applies them to every view of a node.

The store keeps the full sys_info: the dispatcher matches `requires` against it, so a task may
require `environ.G4INSTALL is /opt/geant4` on a node whose value no reader ever sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

MASK = "***"

# A key or option name that says its value is a secret.
_SECRET_WORD = (
    r"(?:pass(?:word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|access[_-]?key"
    r"|credentials?|auth)"
)
SECRET_NAME = re.compile(rf"(?:^|[_.-]){_SECRET_WORD}(?:$|[_.-])|{_SECRET_WORD}$", re.IGNORECASE)

# scheme://user:password@host -> scheme://user:***@host; http(s)://token@host -> ://***@host
# (a user without a password there is how git and most APIs take a token).
_URL_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@?#]*)(?::(?P<password>[^\s/@?#]*))?@"
)
# --token=VALUE, --db-password VALUE, API_KEY=VALUE in a command line or a shell snippet.
_OPTION = re.compile(
    rf"(?P<name>(?:^|(?<=\s))(?:--?|/)?[\w.-]*{_SECRET_WORD}[\w.-]*)"
    r"(?P<sep>=|[ \t]+)(?P<value>\"[^\"]*\"|'[^']*'|[^\s\"']+)",
    re.IGNORECASE,
)
_FLAG = re.compile(rf"^--?[\w.-]*{_SECRET_WORD}[\w.-]*$", re.IGNORECASE)


def _url_mask(match: re.Match[str]) -> str:
    scheme, user, password = match.group("scheme", "user", "password")
    if password is not None:
        return f"{scheme}{user}:{MASK}@"
    if user and scheme.lower() in ("http://", "https://"):
        return f"{scheme}{MASK}@"
    return match.group(0)


def _option_mask(match: re.Match[str]) -> str:
    name, sep = match.group("name", "sep")
    if sep.strip() == "" and name.lstrip("-/") == name:
        # `password reset` in prose is not an option: a bare word needs `=`.
        return match.group(0)
    return f"{name}{sep}{MASK}"


def mask_text(text: str) -> str:
    """`text` with URL passwords and the values of secret-named options masked."""
    if "://" in text:
        text = _URL_USERINFO.sub(_url_mask, text)
    if "=" in text or "-" in text:
        text = _OPTION.sub(_option_mask, text)
    return text


def _mask_argv(items: list[Any]) -> list[Any]:
    """A list such as argv: the item after a secret-named flag (`--token`, `abc`) is masked."""
    shown: list[Any] = []
    hide_next = False
    for item in items:
        if hide_next and isinstance(item, str):
            shown.append(MASK)
        else:
            shown.append(masked(item))
        hide_next = isinstance(item, str) and bool(_FLAG.match(item))
    return shown


def masked(value: Any) -> Any:
    """`value` (any JSON value) with every secret the rules above recognise masked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: (MASK if _secret_key(k, v) else masked(v)) for k, v in value.items()}
    if isinstance(value, list):
        return _mask_argv(value)
    return value


def _secret_key(key: Any, value: Any) -> bool:
    return (
        isinstance(key, str)
        and value is not None
        and not isinstance(value, (bool, dict, list))
        and bool(SECRET_NAME.search(key))
    )


def shown_environ(environ: Any, show: Iterable[str]) -> Any:
    """Every variable's name; the value only for names matching a pattern of `show`
    (`[nodes] show_environ`, shell-style wildcards allowed), with passwords in it masked."""
    if not isinstance(environ, dict):
        return MASK if environ else environ
    patterns = tuple(show)
    return {
        name: mask_text(value)
        if isinstance(value, str) and any(fnmatchcase(str(name), p) for p in patterns)
        else MASK
        for name, value in environ.items()
    }


def shown_sys_info(sys_info: dict[str, Any], show_environ: Iterable[str]) -> dict[str, Any]:
    """sys_info as any read may show it."""
    shown: dict[str, Any] = {}
    for key, value in sys_info.items():
        if key == "environ":
            shown[key] = shown_environ(value, show_environ)
        elif _secret_key(key, value):
            shown[key] = MASK
        else:
            shown[key] = masked(value)
    return shown
