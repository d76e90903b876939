"""The CI loop's settings: ``[ci]``, ``[hooks]`` and ``[notify]`` with its channel tables.

Checked the way `dirt.config` checks the rest of dirt.toml: unknown keys, wrong types and bad
choices are collected and reported at once. A channel is on when its table is present
(``[notify.email]``, ``[notify.github]``, ``[notify.gitlab]``, each ``[[notify.webhook]]``).
Secrets are never in dirt.toml: the ``*_env`` keys name environment variables read when a
message is sent or a webhook arrives (`missing_secrets` lists the unset ones).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args, get_origin, get_type_hints

from dirt.config_values import coerce
from dirt.errors import ConfigError
from dirt.project import valid_task_name

# Task kwargs every record from git gets; `[ci.kwargs."NAME"]` may not set them.
GIT_KWARGS = ("sha", "ref", "repository")
WHEN = ("failing", "problem", "change", "always")
WEBHOOK_EVENTS = ("record.finished", "task.finished")


@dataclass
class CiSettings:
    """``[ci]``: what a record made from a commit gets."""

    tasks: list[str] = field(default_factory=list)
    # Extra kwargs per task name: ``[ci.kwargs."ci.build"]``.
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Glob patterns of the refs that make records, matched against the full ref
    # (refs/heads/main) and the short name (main); empty: every ref.
    branches: list[str] = field(default_factory=list)
    every_commit: bool = False
    # What nodes clone, when a change source does not say (`dirt submit --git`, the hook).
    repository: str = ""
    # A link to a commit for sources that give none, e.g. "https://cgit.example.org/p/commit/?id={sha}".
    changeset_url: str = ""

    def task_kwargs(self, name: str) -> dict[str, Any]:
        return dict(self.kwargs.get(name, {}))

    def wants(self, ref: str | None) -> bool:
        """Whether a push of `ref` makes records (every ref when `branches` is empty)."""
        if not self.branches:
            return True
        if not ref:
            return False
        short = ref.removeprefix("refs/heads/")
        return any(
            fnmatch.fnmatchcase(ref, p) or fnmatch.fnmatchcase(short, p) for p in self.branches
        )


@dataclass
class HooksSettings:
    """``[hooks]``: the forge webhook endpoints. An endpoint refuses everything while its secret
    variable is unnamed or unset."""

    github_secret_env: str = ""
    gitlab_secret_env: str = ""


@dataclass
class EmailSettings:
    """``[notify.email]``: one message per finished record that `when` selects."""

    smtp_host: str = "localhost"
    smtp_port: int = 0  # 0: 465 with `ssl`, else 25
    starttls: bool = False
    ssl: bool = False
    username: str = ""
    password_env: str = ""
    sender: str = "dirt@localhost"
    to: list[str] = field(default_factory=list)
    when: str = "failing"
    timeout: float = 30.0

    @property
    def port(self) -> int:
        return self.smtp_port or (465 if self.ssl else 25)


@dataclass
class GithubSettings:
    """``[notify.github]``: a commit status per task."""

    api_url: str = "https://api.github.com"
    repository: str = ""  # owner/name; default: from the record's `repository`
    token_env: str = ""
    context: str = "dirt"
    timeout: float = 15.0


@dataclass
class GitlabSettings:
    """``[notify.gitlab]``: a commit status per task."""

    api_url: str = "https://gitlab.com/api/v4"
    project: str = ""  # numeric id or group/name; default: from the record's `repository`
    token_env: str = ""
    context: str = "dirt"
    timeout: float = 15.0


@dataclass
class WebhookSettings:
    """One ``[[notify.webhook]]``: a signed JSON POST per event."""

    url: str = ""
    secret_env: str = ""
    events: list[str] = field(default_factory=lambda: ["record.finished"])
    timeout: float = 15.0


@dataclass
class NotifySettings:
    """``[notify]``: the channels, and how long a failing one is retried."""

    email: EmailSettings | None = None
    github: GithubSettings | None = None
    gitlab: GitlabSettings | None = None
    webhook: list[WebhookSettings] = field(default_factory=list)
    backoff_initial: float = 10.0
    backoff_max: float = 1800.0
    give_up_after: float = 48 * 3600.0


@dataclass
class CiConfig:
    ci: CiSettings = field(default_factory=CiSettings)
    hooks: HooksSettings = field(default_factory=HooksSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)


class CiSections(Protocol):
    """What holds the three sections: a `CiConfig`, or dirt's `Settings`."""

    ci: CiSettings
    hooks: HooksSettings
    notify: NotifySettings


SECTIONS: dict[str, type] = {"ci": CiSettings, "hooks": HooksSettings, "notify": NotifySettings}
# The [notify.*] tables that are one channel each (DIRT_NOTIFY_EMAIL_SMTP_HOST sets one's key).
CHANNEL_TABLES = ("email", "github", "gitlab")
# Keys of the [notify] that was read but never implemented, and what took their place.
RENAMED: dict[tuple[str, str], str] = {
    ("notify", "email_to"): "[notify.email] to",
    ("notify", "email_from"): "[notify.email] sender",
    ("notify", "smtp_host"): "[notify.email] smtp_host",
    ("notify", "smtp_port"): "[notify.email] smtp_port",
    ("notify", "on"): "[notify.email] when",
}

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {("notify.email", "when"): WHEN}
POSITIVE: frozenset[tuple[str, str]] = frozenset(
    {
        ("notify", "backoff_initial"),
        ("notify", "backoff_max"),
        ("notify", "give_up_after"),
        ("notify.email", "timeout"),
        ("notify.github", "timeout"),
        ("notify.gitlab", "timeout"),
        ("notify.webhook", "timeout"),
    }
)


def _table_of(kind: Any) -> type | None:
    """The dataclass of an optional sub-table setting (`EmailSettings | None`), else None."""
    if get_origin(kind) in (list, dict):
        return None
    for option in get_args(kind) or (kind,):
        if dataclasses.is_dataclass(option) and isinstance(option, type):
            return option
    return None


def _list_of_tables(kind: Any) -> type | None:
    if get_origin(kind) is list:
        item = get_args(kind)[0]
        if dataclasses.is_dataclass(item) and isinstance(item, type):
            return item
    return None


class _Loader:
    def __init__(self, origin: str, problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems

    def fill(self, target: Any, values: Any, name: str) -> None:
        """Set the keys of TOML table `name` on dataclass `target`; every problem is noted."""
        if not isinstance(values, dict):
            self.problems.append(f"{self.origin}: [{name}] must be a table, got {values!r}")
            return
        cls = type(target)
        hints = get_type_hints(cls)
        for key, value in values.items():
            where = f"{self.origin}: {name}.{key}"
            if key not in hints:
                known = ", ".join(f.name for f in dataclasses.fields(cls))
                instead = RENAMED.get((name, key))
                hint = f"; use {instead} instead" if instead else ""
                self.problems.append(f"{where}: unknown key (known in [{name}]: {known}){hint}")
                continue
            kind = hints[key]
            table = _table_of(kind)
            if table is not None:
                child = getattr(target, key) or table()
                self.fill(child, value, f"{name}.{key}")
                setattr(target, key, child)
            elif (item := _list_of_tables(kind)) is not None:
                setattr(target, key, self.array(item, value, f"{name}.{key}"))
            elif kind == dict[str, dict[str, Any]]:
                setattr(target, key, self.kwargs_tables(value, f"{name}.{key}"))
            else:
                coerced = coerce(value, kind, where, self.problems, self.origin == "environment")
                if coerced is not None and self.allowed(name, key, coerced, where):
                    setattr(target, key, coerced)

    def allowed(self, name: str, key: str, value: Any, where: str) -> bool:
        choices = CHOICES.get((name, key))
        if choices and value not in choices:
            self.problems.append(f"{where}: {value!r} is not one of {', '.join(choices)}")
            return False
        if (name, key) in POSITIVE and value <= 0:
            self.problems.append(f"{where}: must be more than 0, got {value!r}")
            return False
        return True

    def array(self, cls: type, value: Any, name: str) -> list[Any]:
        if not isinstance(value, list):
            self.problems.append(f"{self.origin}: [[{name}]] must be an array of tables")
            return []
        items = []
        for index, table in enumerate(value):
            item = cls()
            self.fill(item, table, f"{name}[{index}]")
            items.append(item)
        return items

    def kwargs_tables(self, value: Any, name: str) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict):
            self.problems.append(f"{self.origin}: [{name}] must be a table of tables")
            return {}
        found: dict[str, dict[str, Any]] = {}
        for task, kwargs in value.items():
            where = f'{self.origin}: [{name}."{task}"]'
            if not isinstance(kwargs, dict):
                self.problems.append(f"{where}: must be a table of kwargs, got {kwargs!r}")
                continue
            reserved = sorted(set(kwargs) & set(GIT_KWARGS))
            if reserved:
                self.problems.append(
                    f"{where}: {', '.join(reserved)} are set by dirt from the commit"
                )
                continue
            try:
                json.dumps(kwargs)
            except (TypeError, ValueError):
                self.problems.append(
                    f"{where}: task kwargs must be JSON values (quote TOML dates and times)"
                )
                continue
            found[task] = dict(kwargs)
        return found


def check_sections(config: CiSections, origin: str, problems: list[str]) -> None:
    """Rules across keys, checked once every key is set."""
    ci = config.ci
    for name in ci.tasks:
        if not valid_task_name(name):
            problems.append(
                f"{origin}: ci.tasks: {name!r} is not a dotted task name (like ci.build)"
            )
    if ci.changeset_url:
        try:
            ci.changeset_url.format(sha="0" * 40, short="0" * 12, ref="refs/heads/main")
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(
                f"{origin}: ci.changeset_url: {ci.changeset_url!r} may use {{sha}}, {{short}} "
                f"and {{ref}} only ({exc!r})"
            )
    for name in sorted(set(ci.kwargs) - set(ci.tasks)):
        problems.append(f'{origin}: [ci.kwargs."{name}"]: {name!r} is not in ci.tasks')
    notify = config.notify
    email = notify.email
    if email is not None:
        if not email.to:
            problems.append(f"{origin}: notify.email.to: name at least one recipient")
        if email.ssl and email.starttls:
            problems.append(
                f"{origin}: notify.email: ssl and starttls exclude each other "
                "(ssl: TLS from the start, usually port 465; starttls: upgrade, usually 587)"
            )
        if email.username and not email.password_env:
            problems.append(f"{origin}: notify.email.username needs password_env")
    for name, forge in (("github", notify.github), ("gitlab", notify.gitlab)):
        if forge is not None and not forge.token_env:
            problems.append(
                f"{origin}: notify.{name}.token_env: name the variable holding the API token"
            )
    github = notify.github
    if github is not None and github.repository and github.repository.count("/") != 1:
        problems.append(
            f"{origin}: notify.github.repository: {github.repository!r} is not owner/name"
        )
    for index, hook in enumerate(notify.webhook):
        where = f"{origin}: notify.webhook[{index}]"
        if not hook.url.startswith(("http://", "https://")):
            problems.append(f"{where}.url: {hook.url!r} is not an http(s) URL")
        for event in hook.events:
            if event not in WEBHOOK_EVENTS:
                problems.append(
                    f"{where}.events: {event!r} is not one of {', '.join(WEBHOOK_EVENTS)}"
                )


def apply_sections(
    config: CiSections,
    data: Mapping[str, Any],
    origin: str,
    problems: list[str],
    *,
    check: bool = True,
) -> None:
    """Apply the ``ci``, ``hooks`` and ``notify`` tables of `data` (a parsed dirt.toml, or the
    DIRT_* overrides) to `config`; other sections are left to the caller. `check=False` leaves
    the rules across keys to a `check_sections` call once every origin is applied."""
    loader = _Loader(origin, problems)
    for section in SECTIONS:
        if section in data:
            loader.fill(getattr(config, section), data[section], section)
    if check:
        check_sections(config, origin, problems)


def load_ci_config(data: Mapping[str, Any], origin: str = "dirt.toml") -> CiConfig:
    """The CI settings of a parsed dirt.toml, or ConfigError listing every problem."""
    config = CiConfig()
    problems: list[str] = []
    apply_sections(config, data, origin, problems)
    if problems:
        raise ConfigError("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def channels_configured(notify: NotifySettings) -> bool:
    """Whether any notification channel is on (else no notification row is ever written)."""
    return bool(notify.email or notify.github or notify.gitlab or notify.webhook)


def missing_secrets(config: CiSections, environ: Mapping[str, str]) -> list[str]:
    """A line per secret variable a configured channel or endpoint names but that is unset."""
    named: list[tuple[str, str]] = [
        ("hooks.github_secret_env", config.hooks.github_secret_env),
        ("hooks.gitlab_secret_env", config.hooks.gitlab_secret_env),
    ]
    notify = config.notify
    if notify.email is not None:
        named.append(("notify.email.password_env", notify.email.password_env))
    if notify.github is not None:
        named.append(("notify.github.token_env", notify.github.token_env))
    if notify.gitlab is not None:
        named.append(("notify.gitlab.token_env", notify.gitlab.token_env))
    for index, hook in enumerate(notify.webhook):
        named.append((f"notify.webhook[{index}].secret_env", hook.secret_env))
    return [
        f"{key}: ${variable} is not set"
        for key, variable in named
        if variable and not environ.get(variable)
    ]
