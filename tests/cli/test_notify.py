"""[notify] is read (old dirt.toml files load) but not implemented yet, and dirt says so."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from dirt.config import load_settings
from dirt.server import notify_keys
from tests.cli.conftest import serve
from tests.conftest import wait_for


def test_the_new_project_has_no_notify_settings(cli_project: Path) -> None:
    toml = (cli_project / "dirt.toml").read_text()
    assert "# [notify]" in toml and "NOT IMPLEMENTED YET" in toml
    assert notify_keys(load_settings(cli_project, environ={})) == []


def test_a_notify_setting_from_the_environment_counts(cli_project: Path) -> None:
    settings = load_settings(cli_project, environ={"DIRT_NOTIFY_SMTP_HOST": "mail.example.org"})
    assert notify_keys(settings) == ["smtp_host"]


def test_serve_warns_that_notify_settings_do_nothing_yet(cli_project: Path) -> None:
    config = cli_project / "dirt.toml"
    # The skeleton's own example, uncommented: it loads, and serve says it does nothing.
    text = config.read_text()
    example = re.sub(r"(?m)^# ([a-z_]+ = .*)$", r"\1", text.split("# [notify]")[1])
    config.write_text(f"{text}\n[notify]{example}")
    server = serve(cli_project)
    try:
        log = cli_project / "dirt.log"
        wait_for(lambda: log.exists() and "serving project" in log.read_text(), what="serve")
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert (
        "[notify] email_from, email_to, on, smtp_host, smtp_port: notifications are not "
        "implemented yet" in output
    )
