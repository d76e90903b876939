"""The requirements language: parse once, match many times, never evaluate.

Four operators, matched against a node's sys_info:
``KEY is VALUE``, ``KEY not VALUE``, ``VALUE in KEY``, ``VALUE not_in KEY``.
KEY may name nested entries with dots: ``version_info.0 is 3``, ``environ.HOME is /root``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dirt.errors import RequirementError

OPERATORS = ("is", "not", "in", "not_in")
_MISSING = object()

# The original documented these names for a task's `platform`; sys.platform says the rest.
PLATFORM_ALIASES = {
    "linux": "linux",
    "linux2": "linux",
    "osx": "darwin",
    "darwin": "darwin",
    "macos": "darwin",
    "windows": "win32",
    "win32": "win32",
    "cygwin": "cygwin",
    "freebsd": "freebsd",
}


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str
    value: str
    text: str

    def matches(self, sys_info: Mapping[str, Any]) -> bool:
        actual = lookup(sys_info, self.key)
        if self.op == "is":
            return actual is not _MISSING and _same(actual, self.value)
        if self.op == "not":
            return actual is _MISSING or not _same(actual, self.value)
        contained = actual is not _MISSING and _contains(actual, self.value)
        return contained if self.op == "in" else not contained

    def unmet_reason(self) -> str:
        """How the waiting reason names this requirement when no node meets it."""
        if self.op == "is":
            return f"no node has {self.key} {self.value}"
        if self.op == "in":
            return f"no node has {self.value} in {self.key}"
        return f"no node meets '{self.text}'"


def parse(text: str) -> Requirement:
    """Parse one expression or raise RequirementError naming it."""
    if not isinstance(text, str):
        raise RequirementError(f"requirement {text!r} is not a string")
    tokens = text.split()
    if len(tokens) == 4 and tokens[1:3] == ["not", "in"]:  # 'G4INSTALL not in environ'
        return Requirement(tokens[3], "not_in", tokens[0], text)
    if len(tokens) >= 3 and tokens[1] in ("is", "not"):
        return Requirement(tokens[0], tokens[1], " ".join(tokens[2:]), text)
    if len(tokens) >= 3 and tokens[-2] in ("in", "not_in"):
        return Requirement(tokens[-1], tokens[-2], " ".join(tokens[:-2]), text)
    hint = ""
    if len(tokens) == 3:
        hint = f" ({tokens[1]!r} is not an operator)"
    raise RequirementError(
        f"requirement {text!r} does not parse{hint}: write 'KEY is VALUE', 'KEY not VALUE', "
        "'VALUE in KEY' or 'VALUE not_in KEY'"
    )


def parse_all(texts: Iterable[str]) -> tuple[Requirement, ...]:
    return tuple(parse(t) for t in texts)


def lookup(sys_info: Mapping[str, Any], key: str) -> Any:
    """Find KEY in sys_info; dots step into nested dicts and lists. Missing gives _MISSING."""
    if key in sys_info:
        return sys_info[key]
    current: Any = sys_info
    for part in key.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list | tuple) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def _same(actual: Any, value: str) -> bool:
    if isinstance(actual, bool):
        return value.lower() == str(actual).lower()
    if isinstance(actual, list | tuple | dict):
        return False
    return str(actual) == value


def _contains(actual: Any, value: str) -> bool:
    if isinstance(actual, Mapping):
        return value in actual
    if isinstance(actual, list | tuple):
        return any(str(item) == value for item in actual)
    if isinstance(actual, str):
        return value in actual
    return False


def normalise_platform(name: str) -> str | None:
    return PLATFORM_ALIASES.get(name.lower())


def platform_matches(task_platform: str | None, sys_info: Mapping[str, Any]) -> bool:
    if not task_platform:
        return True
    wanted = normalise_platform(task_platform)
    have = str(sys_info.get("platform", ""))
    return wanted is not None and (normalise_platform(have) or have) == wanted
