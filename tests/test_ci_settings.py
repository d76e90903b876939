"""[ci], [hooks], [notify.*] and [web] base_url as part of dirt's settings: read from dirt.toml,
then DIRT_* variables, checked with the rest, every problem at once."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dirt.config import load_settings
from dirt.errors import ConfigError


def write(project: Path, text: str) -> None:
    (project / "dirt.toml").write_text('[project]\nname = "p"\n' + text)


def problems(project: Path, text: str, environ: dict[str, str] | None = None) -> str:
    write(project, text)
    with pytest.raises(ConfigError) as info:
        load_settings(project, environ=environ or {})
    return str(info.value)


def test_the_ci_sections_are_settings_like_any_other(project: Path) -> None:
    write(
        project,
        '[ci]\ntasks = ["ci.test"]\nbranches = ["main"]\n'
        '[hooks]\ngithub_secret_env = "GH_SECRET"\n'
        '[notify.email]\nto = ["dev@example.org"]\nwhen = "change"\n',
    )
    settings = load_settings(project, environ={})
    assert settings.ci.tasks == ["ci.test"] and settings.ci.wants("refs/heads/main")
    assert not settings.ci.wants("refs/heads/dev")
    assert settings.hooks.github_secret_env == "GH_SECRET"
    assert settings.notify.email is not None and settings.notify.email.when == "change"


def test_base_url_defaults_to_this_servers_address(project: Path) -> None:
    write(project, '[web]\nhost = "127.0.0.1"\nport = 9000\n')
    assert load_settings(project, environ={}).base_url == "http://127.0.0.1:9000"
    write(project, '[web]\nhost = "0.0.0.0"\n')
    assert load_settings(project, environ={}).base_url == f"http://{socket.getfqdn()}:8080"


def test_base_url_is_taken_as_given_without_a_trailing_slash(project: Path) -> None:
    write(project, '[web]\nbase_url = "https://ci.example.org/dirt/"\n')
    assert load_settings(project, environ={}).base_url == "https://ci.example.org/dirt"


def test_a_base_url_that_is_no_http_url_is_refused(project: Path) -> None:
    assert "web.base_url: 'ci.example.org' is not an http(s) URL" in problems(
        project, '[web]\nbase_url = "ci.example.org"\n'
    )


def test_scalar_keys_come_from_dirt_variables(project: Path) -> None:
    write(project, "")
    settings = load_settings(
        project,
        environ={
            "DIRT_CI_TASKS": "ci.build, ci.test",
            "DIRT_CI_EVERY_COMMIT": "true",
            "DIRT_HOOKS_GITLAB_SECRET_ENV": "GL_SECRET",
            "DIRT_NOTIFY_GIVE_UP_AFTER": "3600",
            "DIRT_NOTIFY_EMAIL_SMTP_HOST": "mail.example.org",
            "DIRT_NOTIFY_EMAIL_TO": "a@example.org,b@example.org",
            "DIRT_NOTIFY_GITHUB_TOKEN_ENV": "GH_TOKEN",
            "DIRT_WEB_BASE_URL": "https://ci.example.org",
        },
    )
    assert settings.ci.tasks == ["ci.build", "ci.test"] and settings.ci.every_commit
    assert settings.hooks.gitlab_secret_env == "GL_SECRET"
    assert settings.notify.give_up_after == 3600
    email = settings.notify.email
    assert email is not None and email.smtp_host == "mail.example.org"
    assert email.to == ["a@example.org", "b@example.org"]
    assert settings.notify.github is not None and settings.notify.github.token_env == "GH_TOKEN"
    assert settings.base_url == "https://ci.example.org"


def test_a_variable_changes_one_key_of_a_channel_the_file_configures(project: Path) -> None:
    write(project, '[notify.email]\nsmtp_host = "mail"\nto = ["dev@example.org"]\n')
    settings = load_settings(project, environ={"DIRT_NOTIFY_EMAIL_SMTP_PORT": "2525"})
    assert settings.notify.email is not None
    assert (settings.notify.email.smtp_host, settings.notify.email.port) == ("mail", 2525)


def test_an_unknown_key_in_a_notify_table_is_reported_with_the_file(project: Path) -> None:
    message = problems(
        project,
        '[notify.email]\nto = ["dev@example.org"]\nrecipients = ["x"]\n'
        '[notify.github]\ntoken_env = "T"\ntoken = "ghp_plain"\n',
    )
    assert f"{project / 'dirt.toml'}: notify.email.recipients: unknown key" in message
    assert "notify.github.token: unknown key" in message


def test_a_bad_variable_is_reported_with_the_file_problems(project: Path) -> None:
    message = problems(
        project,
        '[notify.email]\nwhen = "sometimes"\nto = ["dev@example.org"]\n',
        {"DIRT_NOTIFY_BACKOFF_MAX": "soon", "DIRT_NOTIFY_GITHUB_COLOUR": "red"},
    )
    assert "'sometimes' is not one of failing, problem, change, always" in message
    assert "environment: notify.backoff_max: expected float, got 'soon'" in message
    assert "environment: notify.github.colour: unknown key" in message


def test_the_old_notify_keys_say_what_replaced_them(project: Path) -> None:
    message = problems(project, '[notify]\nemail_to = ["dev@example.org"]\nsmtp_port = 25\n')
    assert "notify.email_to: unknown key" in message
    assert "use [notify.email] to instead" in message
    assert "use [notify.email] smtp_port instead" in message
