"""[notify] is read (old dirt.toml files load) but not implemented yet, and dirt says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from dirt.config import load_settings
from dirt.server import notify_keys
from tests.conftest import DIRT, run_dirt, wait_for


def make_project(tmp_path: Path) -> Path:
    assert run_dirt("create", "proj", cwd=tmp_path).returncode == 0
    return tmp_path / "proj"


def test_the_new_project_has_no_notify_settings(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    toml = (project / "dirt.toml").read_text()
    assert "# [notify]" in toml and "NOT IMPLEMENTED YET" in toml
    assert notify_keys(load_settings(project, environ={})) == []


def test_a_notify_setting_from_the_environment_counts(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    settings = load_settings(project, environ={"DIRT_NOTIFY_SMTP_HOST": "mail.example.org"})
    assert notify_keys(settings) == ["smtp_host"]


def test_serve_warns_that_notify_settings_do_nothing_yet(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    config = project / "dirt.toml"
    # The skeleton's own example, uncommented: it loads, and serve says it does nothing.
    text = config.read_text()
    example = re.sub(r"(?m)^# ([a-z_]+ = .*)$", r"\1", text.split("# [notify]")[1])
    config.write_text(f"{text}\n[notify]{example}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    server = subprocess.Popen(
        [DIRT, "serve", "--no-web"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        log = project / "dirt.log"
        wait_for(lambda: log.exists() and "serving project" in log.read_text(), what="serve")
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert (
        "[notify] email_from, email_to, on, smtp_host, smtp_port: notifications are not "
        "implemented yet" in output
    )
