"""The CI loop end to end: real git repositories with the installed hook, a real `dirt serve`
(uvicorn over TCP) with its dispatcher and sender, aiosmtpd and a loopback HTTP server standing
in for GitHub, GitLab and a webhook receiver."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dirt.project import create_project
from tests.conftest import DIRT, add_local_node, have, need, wait_for

# A task that looks at the commit it was given: it fails when the subject says FAIL.
CI_TASK = """\
import os
import subprocess


def execute(sha, ref, repository):
    subject = ""
    if os.path.isdir(repository):
        subject = subprocess.run(
            ["git", "-C", repository, "log", "-1", "--format=%s", sha],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    if "FAIL" in subject:
        return {"success": False, "reason": subject + ": 1 test failed"}
    return {"success": True, "subject": subject, "ref": ref}
"""


def git_environment(home: Path) -> dict[str, str]:
    """The environment of git commands (and of the hooks they run): no user config, a fixed
    author and committer."""
    need(have("git"), "git")
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIRT_", "GIT_"))}
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Ada Lovelace",
        GIT_AUTHOR_EMAIL="ada@example.org",
        GIT_COMMITTER_NAME="Ada Lovelace",
        GIT_COMMITTER_EMAIL="ada@example.org",
    )
    return env


def git(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout + done.stderr


class Repository:
    """A bare repository and a checkout that pushes to it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.env = env
        self.bare = root / "project.git"
        self.checkout = root / "work"
        git(root, env, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(root, env, "init", "-q", "-b", "main", str(self.checkout))
        git(self.checkout, env, "remote", "add", "origin", str(self.bare))
        self._count = 0

    def commit(self, subject: str) -> str:
        self._count += 1
        (self.checkout / f"change{self._count}.txt").write_text(subject, encoding="utf-8")
        git(self.checkout, self.env, "add", "-A")
        git(self.checkout, self.env, "commit", "-q", "-m", subject)
        return git(self.checkout, self.env, "rev-parse", "HEAD").strip()

    def push(self, *refspecs: str) -> str:
        """`git push origin REFSPEC...`; what the pusher sees (the hook's lines included)."""
        return git(self.checkout, self.env, "push", "origin", *refspecs)


class Server:
    """`dirt serve --port 0` in a project, as a process; its output goes to files."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.project = project
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        out = (self.project / "serve.out").open("ab")
        size = (self.project / "serve.out").stat().st_size
        self.proc = subprocess.Popen(
            [DIRT, "serve", "--port", "0"],
            cwd=self.project,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

        def printed() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"dirt serve exited: {self.output()}")
            text = (self.project / "serve.out").read_bytes()[size:].decode("utf-8", "replace")
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", text)
            return found.group(1) if found else None

        self.url = wait_for(printed, 30, 0.05, "dirt serve to print its URL")
        return self.url

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return (self.project / "serve.out").read_text("utf-8", "replace")

    def log(self) -> str:
        return (self.project / "dirt.log").read_text("utf-8", "replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, float]:
        """POST over TCP: (status, JSON answer, seconds it took)."""
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        for name, value in headers.items():
            request.add_header(name, value)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        return status, json.loads(text or b"null"), time.monotonic() - started


BASE_URL = "https://dirt.example.org"


def make_project(root: Path, config: str) -> Path:
    """A project as `dirt create` makes it (in-process, as the node), with the task ci.test,
    this machine as node `local` with 2 slots, [web] base_url = BASE_URL, and `config`
    appended to its dirt.toml."""
    project = create_project(root / "proj")
    toml = project / "dirt.toml"
    text = toml.read_text().replace("poll_interval = 0.05", "poll_interval = 0.02")
    text = text.replace("port = 8080\n", f'port = 8080\nbase_url = "{BASE_URL}"\n', 1)
    toml.write_text(text + "\n" + config)
    (project / "tasks" / "ci").mkdir()
    (project / "tasks" / "ci" / "__init__.py").write_text("")
    (project / "tasks" / "ci" / "test.py").write_text(CI_TASK)
    add_local_node(project, slots=2)
    return project
