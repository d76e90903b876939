"""Settings: dirt.toml, then DIRT_* environment variables, then flags.

Unknown keys and wrong types are rejected, and every problem is reported at once.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from dirt.errors import ConfigError, ProjectNotFoundError
from dirt.models import TaskState

CONFIG_FILE = "dirt.toml"


@dataclass
class ProjectSettings:
    name: str = "dirt"
    database: str = ""
    database_url: str = ""


@dataclass
class DispatchSettings:
    isolation: str = "process"
    balancer: str = "slots"
    poll_interval: float = 0.05
    timeout: float = 0.0
    max_attempts: int = 3
    load_margin: float = 0.5
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    # Seconds a dispatcher's lease lasts (renewed every third of it): one that has not renewed
    # for this long is dead, and the others take over its tasks and nodes.
    lease: float = 15.0
    # Seconds a stopping dispatcher (SIGTERM, Ctrl-C) waits for its running tasks to finish
    # before it returns the rest to waiting; a second signal stops it at once.
    stop_grace: float = 10.0


@dataclass
class HostSettings:
    """One node's own table, ``[nodes.hosts."ADDRESS"]``: a key left out (None) falls back to
    ``[nodes]``. Keyed by the address the node was added under (an ssh_config alias counts).
    """

    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    ssh_config: str | None = None
    python: str | None = None
    host_key_checking: str | None = None
    connect_timeout: float | None = None
    slots: int | None = None  # used by `dirt nodes add` when no --slots is given

    def connection_options(self) -> dict[str, Any]:
        """The connection options this table sets: every key given except `slots`."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "slots" and getattr(self, f.name) is not None
        }


@dataclass
class NodeDefaults:
    user: str = ""
    port: int = 0
    identity_file: str = ""
    ssh_config: str = ""
    python: str = "python3"
    host_key_checking: str = "accept-new"
    connect_timeout: float = 10.0
    hosts: dict[str, HostSettings] = field(default_factory=dict)

    def host(self, address: str) -> HostSettings:
        """The ``[nodes.hosts."ADDRESS"]`` table of one node (empty when there is none)."""
        return self.hosts.get(address) or HostSettings()


@dataclass
class LogSettings:
    file: str = "dirt.log"
    level: str = "INFO"


@dataclass
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024 * 1024


@dataclass
class AuthSettings:
    read: str = "open"


@dataclass
class NotifySettings:
    email_to: list[str] = field(default_factory=list)
    email_from: str = "dirt@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    on: list[str] = field(default_factory=lambda: [TaskState.FAILED.value])


SECTIONS: dict[str, type] = {
    "project": ProjectSettings,
    "dispatch": DispatchSettings,
    "nodes": NodeDefaults,
    "log": LogSettings,
    "web": WebSettings,
    "auth": AuthSettings,
    "notify": NotifySettings,
}

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("dispatch", "isolation"): ("process", "thread"),
    ("dispatch", "balancer"): ("slots", "load"),
    ("nodes", "host_key_checking"): ("accept-new", "strict", "no"),
    ("log", "level"): ("DEBUG", "INFO", "WARNING", "ERROR"),
    ("auth", "read"): ("open", "token"),
}

# The smallest value a number may take. A host table is checked with the rules of [nodes].
MINIMUM: dict[tuple[str, str], int | float] = {
    ("nodes", "slots"): 1,
    ("dispatch", "lease"): 1.0,
    ("dispatch", "stop_grace"): 0.0,
}


@dataclass
class Settings:
    """Everything a dirt command needs to know about its project."""

    project_dir: Path
    project: ProjectSettings = field(default_factory=ProjectSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    nodes: NodeDefaults = field(default_factory=NodeDefaults)
    log: LogSettings = field(default_factory=LogSettings)
    web: WebSettings = field(default_factory=WebSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)

    @property
    def name(self) -> str:
        return self.project.name

    @property
    def tasks_dir(self) -> Path:
        return self.project_dir / "tasks"

    @property
    def database_url(self) -> str:
        if self.project.database_url:
            return self.project.database_url
        db_name = self.project.database or self.project.name
        return f"sqlite:///{self.project_dir / (db_name + '.sqlite')}"

    @property
    def log_path(self) -> Path | None:
        if not self.log.file:
            return None
        path = Path(self.log.file)
        return path if path.is_absolute() else self.project_dir / path


def find_project(start: Path | None = None) -> Path:
    """Walk up from `start` (default: the working directory) to the folder holding dirt.toml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise ProjectNotFoundError(
        f"no {CONFIG_FILE} in {here} or any folder above it: cd into a dirt project, "
        "pass --project PATH (or set DIRT_PROJECT), or make one with `dirt create NAME`"
    )


def _coerce(value: Any, kind: Any, where: str, problems: list[str], from_env: bool) -> Any:
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


def _table_class(kind: Any) -> type | None:
    """The dataclass of a ``dict[str, SomeTable]`` setting (e.g. [nodes.hosts]), else None."""
    if get_origin(kind) is dict:
        value_kind = get_args(kind)[1]
        if isinstance(value_kind, type) and dataclasses.is_dataclass(value_kind):
            return value_kind
    return None


def _apply_table(
    target: Any,
    values: dict[str, Any],
    name: str,
    rules: str,
    origin: str,
    problems: list[str],
) -> None:
    """Set the keys of one TOML table `name` on the dataclass `target`, checking each against
    its type and the CHOICES and MINIMUM of section `rules`."""
    cls = type(target)
    hints = get_type_hints(cls)
    from_env = origin == "environment"
    for key, value in values.items():
        where = f"{origin}: {name}.{key}"
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            problems.append(f"{where}: unknown key (known in [{name}]: {known})")
            continue
        table_class = _table_class(hints[key])
        if table_class is not None:
            _apply_tables(
                getattr(target, key), table_class, value, f"{name}.{key}", rules, origin, problems
            )
            continue
        coerced = _coerce(value, hints[key], where, problems, from_env)
        if coerced is None:
            continue
        choices = CHOICES.get((rules, key))
        if choices and coerced not in choices:
            problems.append(f"{where}: {coerced!r} is not one of {', '.join(choices)}")
            continue
        minimum = MINIMUM.get((rules, key))
        if minimum is not None and coerced < minimum:
            problems.append(f"{where}: must be at least {minimum}, got {coerced!r}")
            continue
        setattr(target, key, coerced)


def _apply_tables(
    tables: dict[str, Any],
    cls: type,
    values: Any,
    name: str,
    rules: str,
    origin: str,
    problems: list[str],
) -> None:
    """Fill `tables` from a table of tables (``[nodes.hosts."build1"]``, ...): a later origin
    changes only the keys it gives."""
    if not isinstance(values, dict):
        problems.append(f"{origin}: [{name}] must be a table of tables, got {values!r}")
        return
    for key, table in values.items():
        child = f'{name}."{key}"'
        if not isinstance(table, dict):
            problems.append(f"{origin}: [{child}] must be a table, got {table!r}")
            continue
        target = tables.get(key) or cls()
        _apply_table(target, table, child, rules, origin, problems)
        tables[key] = target


def _apply(settings: Settings, data: dict[str, Any], origin: str, problems: list[str]) -> None:
    for section, values in data.items():
        if section not in SECTIONS:
            problems.append(f"{origin}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
            continue
        if not isinstance(values, dict):
            problems.append(f"{origin}: [{section}] must be a table")
            continue
        _apply_table(getattr(settings, section), values, section, section, origin, problems)


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, str]]:
    """DIRT_SECTION_KEY=value, plus DIRT_DATABASE_URL as the common shortcut."""
    data: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("DIRT_") or name == "DIRT_PROJECT":
            continue
        rest = name[len("DIRT_") :].lower()
        if rest == "database_url":
            data.setdefault("project", {})["database_url"] = value
            continue
        section, _, key = rest.partition("_")
        if section in SECTIONS and key:
            data.setdefault(section, {})[key] = value
    return data


def load_settings(
    project_dir: Path | str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Read a project's dirt.toml, then DIRT_* variables, then `overrides` (from flags)."""
    env = dict(os.environ if environ is None else environ)
    if project_dir is None and env.get("DIRT_PROJECT"):
        project_dir = env["DIRT_PROJECT"]
    if project_dir is None:
        root = find_project()
    else:
        root = Path(project_dir).resolve()
        if not (root / CONFIG_FILE).is_file():
            raise ProjectNotFoundError(
                f"{root} is not a dirt project (no {CONFIG_FILE}): "
                "make one with `dirt create NAME` or point --project at one"
            )
    settings = Settings(project_dir=root)
    problems: list[str] = []
    config_path = root / CONFIG_FILE
    try:
        data = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from exc
    _apply(settings, data, str(config_path), problems)
    _apply(settings, _env_overrides(env), "environment", problems)
    if overrides:
        _apply(settings, overrides, "command line", problems)
    if problems:
        raise ConfigError("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))
    return settings
