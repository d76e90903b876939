"""Notifications outlive the server: a mail that could not go out while the SMTP server was
down is still pending after `dirt serve` stops, and the next `dirt serve` sends it, once."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from dirt.db import outbox
from tests.ci.conftest import Repository, Server, git_environment, make_project
from tests.conftest import DIRT, project_service, wait_for
from tests.httpstub import free_port
from tests.notify.conftest import SmtpServer


def mails(project: Path) -> list[dict[str, Any]]:
    """The mails in the outbox, as `dirt notify list --all --json` shows them."""
    with project_service(project) as service:
        found = service.notifications(outbox.STATES)
    return [n.to_doc() for n in found if n.channel == "email"]


def test_a_mail_pending_at_a_restart_is_sent_once_after_it(tmp_path: Path) -> None:
    smtp = SmtpServer(free_port())
    project = make_project(
        tmp_path,
        '[ci]\ntasks = ["ci.test"]\n[notify]\nbackoff_initial = 0.2\nbackoff_max = 0.4\n'
        f'[notify.email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp.port}\n'
        'to = ["dev@example.org"]\n',
    )
    env = git_environment(tmp_path / "home")
    repo = Repository(tmp_path, env)
    sha = repo.commit("FAIL everything")
    server = Server(project, env)
    server.start()
    try:
        added = subprocess.run(
            [DIRT, "--project", str(project), "submit", "--git"],
            cwd=repo.checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert added.returncode == 0, added.stderr
        wait_for(lambda: any(m["attempts"] >= 2 for m in mails(project)), 60, 0.1, "tries")
    finally:
        assert server.stop() == 0, server.output()
    [waiting] = mails(project)
    assert (waiting["state"], waiting["record_id"]) == ("pending", sha)  # given back at stop
    tries = waiting["attempts"]
    time.sleep(0.5)
    assert mails(project)[0]["attempts"] == tries  # nothing sends while no server runs
    smtp.start()
    try:
        server.start()
        try:
            wait_for(lambda: smtp.inbox.messages, 30, 0.05, "the mail after the restart")
            wait_for(lambda: mails(project)[0]["state"] == "sent", 10, 0.1, "sent")
            time.sleep(1.0)
        finally:
            assert server.stop() == 0, server.output()
        assert len(smtp.inbox.messages) == 1
        assert smtp.inbox.messages[0]["Subject"].startswith(f"[proj] {sha[:10]} on main: 1 of 1")
    finally:
        smtp.stop()
