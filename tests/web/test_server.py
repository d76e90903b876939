"""`dirt serve`, `dirt web` and `dirt token` as real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from dirt.config import load_settings
from dirt.service import Service
from tests.conftest import DIRT, run_dirt


def start(project: Path, *args: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    proc = subprocess.Popen(
        [DIRT, *args, "--port", "0"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    _, errors = proc.communicate()
    raise AssertionError(f"no URL printed: {errors}")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_dirt_serve_runs_web_and_stops_with_streams_open(project: Path) -> None:
    proc, url = start(project, "serve")
    stream = subprocess.Popen(["curl", "-sN", url + "events"], stdout=subprocess.DEVNULL)
    try:
        with urllib.request.urlopen(url + "healthz", timeout=5) as response:
            assert response.read() == b"ok\n"
        time.sleep(0.5)  # the event stream is open now
        started = time.monotonic()
        assert stop(proc) == 0
        assert time.monotonic() - started < 10
    finally:
        stream.kill()
        stream.wait()


def test_dirt_web_alone(project: Path) -> None:
    proc, url = start(project, "web")
    try:
        with urllib.request.urlopen(url + "api/records", timeout=5) as response:
            assert response.status == 200
    finally:
        assert stop(proc) == 0


def test_port_in_use_is_a_clear_error(project: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_dirt("web", "--port", str(port), cwd=project, timeout=30)
    assert result.returncode == 2
    assert "cannot listen" in result.stderr and "--no-web" in result.stderr


def test_token_create_prints_a_token_once(project: Path) -> None:
    made = run_dirt("token", "create", "ci", cwd=project)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("dirt_") and len(token) > 30
    again = run_dirt("token", "create", "ci", cwd=project)
    assert again.returncode == 2 and "exists" in again.stderr
    service = Service(load_settings(project, overrides={"log": {"file": ""}}, environ={}))
    try:
        assert service.verify_token(token) == "ci"
    finally:
        service.close()
    assert "ci" in run_dirt("token", "list", cwd=project).stdout
    assert run_dirt("token", "revoke", "ci", cwd=project).returncode == 0
