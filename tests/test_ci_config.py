"""[ci], [hooks] and [notify.*]: checked like the rest of dirt.toml, every problem at once."""

from __future__ import annotations

import tomllib

import pytest

from dirt.ci_config import CiConfig, apply_sections, load_ci_config, missing_secrets
from dirt.errors import ConfigError

FULL = """
[ci]
tasks = ["ci.build", "ci.test"]
branches = ["main", "release/*"]
every_commit = true

[ci.kwargs."ci.build"]
jobs = 4
target = "all"

[hooks]
github_secret_env = "GITHUB_WEBHOOK_SECRET"

[notify]
give_up_after = 7200

[notify.email]
smtp_host = "mail.example.org"
smtp_port = 587
starttls = true
username = "dirt"
password_env = "SMTP_PASSWORD"
sender = "ci@example.org"
to = ["dev@example.org"]
when = "problem"

[notify.github]
token_env = "GITHUB_TOKEN"

[notify.gitlab]
api_url = "https://gitlab.example.org/api/v4"
token_env = "GITLAB_TOKEN"
context = "ci"

[[notify.webhook]]
url = "https://chat.example.org/hook"
secret_env = "CHAT_SECRET"
events = ["record.finished", "task.finished"]

[[notify.webhook]]
url = "https://audit.example.org/dirt"
"""


def load(text: str) -> CiConfig:
    return load_ci_config(tomllib.loads(text))


def problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)


def test_nothing_configured_means_no_channel() -> None:
    config = load("")
    notify = config.notify
    assert (notify.email, notify.github, notify.gitlab, notify.webhook) == (None, None, None, [])
    assert config.ci.tasks == [] and config.ci.wants("refs/heads/anything")


def test_a_full_configuration_loads() -> None:
    config = load(FULL)
    assert config.ci.kwargs == {"ci.build": {"jobs": 4, "target": "all"}}
    assert config.ci.every_commit and config.ci.branches == ["main", "release/*"]
    assert config.hooks.github_secret_env == "GITHUB_WEBHOOK_SECRET"
    assert config.notify.email is not None and config.notify.email.port == 587
    assert config.notify.email.when == "problem"
    assert config.notify.github is not None
    assert config.notify.github.api_url == "https://api.github.com"
    assert config.notify.github.context == "dirt"
    assert config.notify.gitlab is not None and config.notify.gitlab.context == "ci"
    assert [h.url for h in config.notify.webhook] == [
        "https://chat.example.org/hook",
        "https://audit.example.org/dirt",
    ]
    assert config.notify.webhook[1].events == ["record.finished"]
    assert config.notify.give_up_after == 7200


def test_email_ports_default_by_mode() -> None:
    plain = load('[notify.email]\nto = ["a@example.org"]\n').notify.email
    tls = load('[notify.email]\nto = ["a@example.org"]\nssl = true\n').notify.email
    assert plain is not None and tls is not None and (plain.port, tls.port) == (25, 465)


def test_unknown_keys_and_wrong_types_are_all_reported() -> None:
    message = problems(
        '[ci]\ntask = ["x"]\nevery_commit = "yes"\n'
        '[notify.email]\nto = "dev@example.org"\nsmtp_server = "x"\n'
        "[notify.github]\ntoken = 1\n"
        '[[notify.webhook]]\nurl = "https://x.example.org"\nsecret = "plain"\n'
    )
    for expected in (
        "ci.task: unknown key",
        "ci.every_commit: expected bool",
        "notify.email.to: expected list",
        "notify.email.smtp_server: unknown key",
        "notify.github.token: unknown key",
        "notify.webhook[0].secret: unknown key",
    ):
        assert expected in message


def test_when_must_be_one_of_the_four() -> None:
    assert "'sometimes' is not one of failing, problem, change, always" in problems(
        '[notify.email]\nto = ["a@example.org"]\nwhen = "sometimes"\n'
    )


def test_extra_kwargs_may_not_set_what_dirt_sets_from_the_commit() -> None:
    message = problems(
        '[ci]\ntasks = ["ci.build"]\n[ci.kwargs."ci.build"]\nsha = "x"\n[ci.kwargs."ci.other"]\n'
    )
    assert "sha are set by dirt from the commit" in message
    assert "'ci.other' is not in ci.tasks" in message


def test_extra_kwargs_must_be_json_values() -> None:
    assert "quote TOML dates and times" in problems(
        '[ci]\ntasks = ["ci.build"]\n[ci.kwargs."ci.build"]\nsince = 2024-05-01\n'
    )


def test_task_names_must_be_dotted_names() -> None:
    assert "'ci build' is not a dotted task name" in problems('[ci]\ntasks = ["ci build"]\n')


def test_a_channel_without_what_it_needs_is_reported() -> None:
    message = problems(
        '[notify.email]\nssl = true\nstarttls = true\nusername = "u"\n'
        '[notify.github]\n[[notify.webhook]]\nevents = ["record.started"]\n'
    )
    for expected in (
        "notify.email.to: name at least one recipient",
        "ssl and starttls exclude each other",
        "notify.email.username needs password_env",
        "notify.github.token_env: name the variable",
        "notify.webhook[0].url: '' is not an http(s) URL",
        "'record.started' is not one of record.finished, task.finished",
    ):
        assert expected in message


def test_a_changeset_url_template_may_use_sha_short_and_ref_only() -> None:
    assert "may use {sha}, {short} and {ref} only" in problems(
        '[ci]\nchangeset_url = "https://x.example.org/{commit}"\n'
    )


def test_backoff_settings_must_be_positive() -> None:
    assert "notify.backoff_initial: must be more than 0" in problems(
        "[notify]\nbackoff_initial = 0\n"
    )


def test_environment_values_are_read_as_text() -> None:
    config = CiConfig()
    found: list[str] = []
    apply_sections(
        config, {"ci": {"tasks": "ci.build, ci.test", "every_commit": "true"}}, "environment", found
    )
    assert found == []
    assert config.ci.tasks == ["ci.build", "ci.test"] and config.ci.every_commit


def test_unset_secret_variables_are_listed() -> None:
    config = load(FULL)
    missing = missing_secrets(config, {"GITHUB_TOKEN": "x", "SMTP_PASSWORD": "y"})
    assert missing == [
        "hooks.github_secret_env: $GITHUB_WEBHOOK_SECRET is not set",
        "notify.gitlab.token_env: $GITLAB_TOKEN is not set",
        "notify.webhook[0].secret_env: $CHAT_SECRET is not set",
    ]
