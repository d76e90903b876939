"""A server listening beyond loopback (on a veth address, reached from a network namespace):
anonymous reads are refused, a read token reads but cannot write, an api token writes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dirt.models import TokenScope
from tests.conftest import need, run_dirt
from tests.ssh.sshd import Netns, namespaces_possible
from tests.web.conftest import make_token, start_dirt, stop_dirt


@pytest.fixture
def netns() -> Iterator[Netns]:
    possible, why = namespaces_possible()
    need(possible, f"network namespaces ({why})")
    space = Netns(f"dirt-web-{os.getpid()}", 70)
    space.create()
    try:
        yield space
    finally:
        space.destroy()


def curl(netns: Netns, url: str, *args: str) -> tuple[int, str]:
    """curl from inside the namespace: a client on another machine, as far as dirt can tell."""
    result = subprocess.run(
        ["ip", "netns", "exec", netns.name, "curl", "-s", "-m", "10", "-w", "\n%{http_code}",
         *args, url],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), body


def test_reads_need_a_token_off_loopback(project: Path, netns: Netns) -> None:
    reader = make_token(project, "dashboard", TokenScope.READ)
    writer = make_token(project, "ci", TokenScope.API)
    proc, url = start_dirt(project, "web", "--host", netns.outer_address)
    try:
        assert netns.outer_address in url
        assert curl(netns, url + "api/records")[0] == 401
        assert curl(netns, url + "nodes")[0] == 401
        assert curl(netns, url + "healthz") == (200, "ok\n")
        code, body = curl(netns, url + "api/records", "-H", f"Authorization: Bearer {reader}")
        assert code == 200 and "records" in json.loads(body)
        record = json.dumps({"record": {"_id": "r1"}})
        post = ("-H", "Content-Type: application/json", "-d", record)
        assert curl(netns, url + "api/records", *post)[0] == 401
        assert (
            curl(netns, url + "api/records", *post, "-H", f"Authorization: Bearer {reader}")[0]
            == 403
        )
        assert (
            curl(netns, url + "api/records", *post, "-H", f"Authorization: Bearer {writer}")[0]
            == 201
        )
    finally:
        code, log = stop_dirt(proc)
    assert code == 0
    assert f"reads need an API token (it listens on {netns.outer_address}" in log
    audit = run_dirt("audit", "--json", cwd=project)
    web_writes = [e for e in json.loads(audit.stdout) if e["via"] == "token"]
    assert [(e["actor"], e["action"], e["client"]) for e in web_writes] == [
        ("ci", "submit", netns.inner_address)
    ]


def test_open_reads_off_loopback_only_when_said_and_loudly(project: Path, netns: Netns) -> None:
    proc, url = start_dirt(
        project, "web", "--host", netns.outer_address, env={"DIRT_AUTH_READ": "open"}
    )
    try:
        assert curl(netns, url + "api/records")[0] == 200
        record = json.dumps({"record": {"_id": "r1"}})
        post = ("-H", "Content-Type: application/json", "-d", record)
        assert curl(netns, url + "api/records", *post)[0] == 401, "writes still need a token"
    finally:
        code, log = stop_dirt(proc)
    assert code == 0
    assert "WARNING web: reads are open to anyone who can reach the server" in log
