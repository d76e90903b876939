"""Settings: dirt.toml, then DIRT_* environment variables, then flags.

Unknown keys and wrong types are rejected, and every problem is reported at once.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from dirt import ci_config
from dirt.ci_config import CiSettings, HooksSettings, NotifySettings
from dirt.config_values import coerce
from dirt.errors import ConfigError, ProjectNotFoundError

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
    order: str = "fair"
    poll_interval: float = 0.05
    timeout: float = 0.0
    max_attempts: int = 3
    load_margin: float = 0.5
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    # Per task, in bytes (or a string such as "16 MiB"): attachments in all (over it the task
    # fails), and stored output (beyond it the head and the tail are kept).
    attachment_limit: int = 4 << 30
    output_limit: int = 16 << 20
    # Seconds a dispatcher's lease lasts (renewed every third of it): one that has not renewed
    # for this long is dead, and the others take over its tasks and nodes.
    lease: float = 15.0
    # Seconds a stopping dispatcher (SIGTERM, Ctrl-C) waits for its running tasks to finish
    # before it returns the rest to waiting; a second signal stops it at once.
    stop_grace: float = 10.0


@dataclass
class StorageSettings:
    # The blob store's folder (relative to the project), e.g. a shared disk for several masters.
    blobs: str = "blobs"


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
    # Environment variables whose values reads may show (shell wildcards allowed); every other
    # variable shows by name only. `requires` matches the full environment regardless.
    show_environ: list[str] = field(
        default_factory=lambda: ["PATH", "PYTHONPATH", "HOME", "SHELL", "LANG"]
    )
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
    # Where people reach the web pages: links in mails and commit statuses start with it.
    # Default: http://HOST:PORT/ of this server (set it when a proxy or a name fronts dirt).
    base_url: str = ""
    # HTTPS: the certificate chain and its private key (PEM files); both or neither.
    certfile: str = ""
    keyfile: str = ""
    # Addresses (or networks) of reverse proxies whose X-Forwarded-For/-Proto are believed;
    # empty: forwarded headers are ignored. Set, the server counts as serving others.
    forwarded_allow_ips: list[str] = field(default_factory=list)
    # Web server processes `dirt serve` and `dirt web` run, beside the dispatcher's.
    workers: int = 1


@dataclass
class AuthSettings:
    # "auto": open while the web server listens on loopback only, else a token is needed.
    read: str = "auto"


@dataclass
class AgentSettings:
    # Seconds a pull-mode agent's job lives without a heartbeat: then its attempt is lost, the
    # task waits again (under max_attempts), and a late result from it is refused. An agent
    # node is offline once it has not polled for as long.
    lease: float = 30.0


@dataclass
class BatchSettings:
    # Seconds between the polls of a batch node's jobs: one `squeue` call for all of them.
    poll_interval: float = 1.0
    # The interpreter a batch job runs the agent with on the compute host: a name looked up
    # on the job's PATH, or a full path (a wrapper such as a pyenv shim costs each job its
    # start-up time).
    python: str = "python3"


SECTIONS: dict[str, type] = {
    "project": ProjectSettings,
    "dispatch": DispatchSettings,
    "storage": StorageSettings,
    "nodes": NodeDefaults,
    "log": LogSettings,
    "web": WebSettings,
    "auth": AuthSettings,
    "agents": AgentSettings,
    "batch": BatchSettings,
    # [ci], [hooks] and [notify] (with its channel tables) are checked by dirt.ci_config.
    **ci_config.SECTIONS,
}

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("dispatch", "isolation"): ("process", "thread"),
    ("dispatch", "balancer"): ("slots", "load"),
    ("dispatch", "order"): ("fair", "fifo"),
    ("nodes", "host_key_checking"): ("accept-new", "strict", "no"),
    ("log", "level"): ("DEBUG", "INFO", "WARNING", "ERROR"),
    ("auth", "read"): ("auto", "open", "token"),
}

# The smallest value a number may take. A host table is checked with the rules of [nodes].
MINIMUM: dict[tuple[str, str], int | float] = {
    ("nodes", "slots"): 1,
    ("web", "workers"): 1,
    ("dispatch", "attachment_limit"): 0,
    # Room for a head and a tail of at least the 64 KiB kept with each task.
    ("dispatch", "output_limit"): 128 * 1024,
    ("dispatch", "lease"): 1.0,
    ("dispatch", "stop_grace"): 0.0,
    ("agents", "lease"): 0.5,
    # squeue in a loop loads the controller every user of the cluster shares.
    ("batch", "poll_interval"): 0.1,
}

BATCH_POLL_MOST = 60.0

# Sizes in bytes: an integer, or a string with a unit ("16 MiB", "4GiB", "500 kB").
BYTE_SIZES = frozenset({("dispatch", "attachment_limit"), ("dispatch", "output_limit")})
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_size(value: Any) -> int | None:
    """Bytes from an int or a string like "16 MiB"; None when it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        return None
    if unit not in _UNITS or amount < 0:
        return None
    return int(amount * _UNITS[unit])


@dataclass
class Settings:
    """Everything a dirt command needs to know about its project."""

    project_dir: Path
    project: ProjectSettings = field(default_factory=ProjectSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    nodes: NodeDefaults = field(default_factory=NodeDefaults)
    storage: StorageSettings = field(default_factory=StorageSettings)
    log: LogSettings = field(default_factory=LogSettings)
    web: WebSettings = field(default_factory=WebSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    agents: AgentSettings = field(default_factory=AgentSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    ci: CiSettings = field(default_factory=CiSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
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
    def base_url(self) -> str:
        """`[web] base_url` without a trailing slash, else this server's own address."""
        if self.web.base_url:
            return self.web.base_url.rstrip("/")
        host = self.web.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.web.port}"

    @property
    def blobs_path(self) -> Path:
        """The blob store's folder: [storage] blobs, relative to the project folder."""
        return self.project_dir / Path(self.storage.blobs).expanduser()

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
        if (rules, key) in BYTE_SIZES:
            coerced = parse_size(value)
            if coerced is None:
                problems.append(
                    f'{where}: expected a size in bytes (e.g. 16777216 or "16 MiB"), got {value!r}'
                )
                continue
        else:
            coerced = coerce(value, hints[key], where, problems, from_env)
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
    ci_sections: dict[str, Any] = {}
    for section, values in data.items():
        if section not in SECTIONS:
            problems.append(f"{origin}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
            continue
        if not isinstance(values, dict):
            problems.append(f"{origin}: [{section}] must be a table")
            continue
        if section in ci_config.SECTIONS:
            ci_sections[section] = values
            continue
        _apply_table(getattr(settings, section), values, section, section, origin, problems)
    if ci_sections:
        ci_config.apply_sections(settings, ci_sections, origin, problems, check=False)


def _check(settings: Settings, origin: str, problems: list[str]) -> None:
    """Rules across keys, once every origin is applied."""
    base_url = settings.web.base_url
    if base_url and not (
        base_url.startswith(("http://", "https://")) and len(base_url.split("/")[2]) > 0
    ):
        problems.append(f"{origin}: web.base_url: {base_url!r} is not an http(s) URL")
    if settings.batch.poll_interval > BATCH_POLL_MOST:
        problems.append(
            f"{origin}: batch.poll_interval: at most {BATCH_POLL_MOST:g} s (Slurm forgets a "
            f"finished job MinJobAge, 300 s by default, after it ends), got "
            f"{settings.batch.poll_interval!r}"
        )
    python = settings.batch.python
    if not python.strip() or any(ord(c) < 32 for c in python):
        problems.append(
            f"{origin}: batch.python: {python!r} is not a command (give python3 or a full path)"
        )
    ci_config.check_sections(settings, origin, problems)


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """DIRT_SECTION_KEY=value, plus DIRT_DATABASE_URL as the common shortcut. A channel table's
    keys are DIRT_NOTIFY_CHANNEL_KEY (DIRT_NOTIFY_EMAIL_SMTP_HOST: [notify.email] smtp_host)."""
    data: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith("DIRT_") or name == "DIRT_PROJECT":
            continue
        rest = name[len("DIRT_") :].lower()
        if rest == "database_url":
            data.setdefault("project", {})["database_url"] = value
            continue
        section, _, key = rest.partition("_")
        if section not in SECTIONS or not key:
            continue
        table, _, channel_key = key.partition("_")
        if section == "notify" and table in ci_config.CHANNEL_TABLES and channel_key:
            data.setdefault(section, {}).setdefault(table, {})[channel_key] = value
            continue
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
    _check(settings, str(config_path), problems)
    if problems:
        raise ConfigError("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))
    return settings
