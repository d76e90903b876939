"""One setting's value checked against its declared type: shared by `dirt.config` and
`dirt.ci_config`, so every section of dirt.toml (and every DIRT_* variable) reads alike."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin


def coerce(value: Any, kind: Any, where: str, problems: list[str], from_env: bool) -> Any:
    """`value` as `kind` (bool, int, float, str, list[str], or one of those or None), or None
    with a problem noted. Environment values are text: "true", "4", "a, b" are read as such."""
    if get_origin(kind) in (Union, types.UnionType):  # `int | None`: None means "not set"
        kind = next(k for k in get_args(kind) if k is not type(None))
    if kind is bool:
        if from_env and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
    elif kind is int:
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if from_env and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind == list[str]:
        if from_env and isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    name = getattr(kind, "__name__", str(kind))
    problems.append(f"{where}: expected {name}, got {value!r}")
    return None
