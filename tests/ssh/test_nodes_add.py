"""`dirt nodes add` over real SSH: what it stores, and why a host could not be added."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_dirt
from tests.ssh.sshd import Fleet, free_port

pytestmark = pytest.mark.ssh


def dirt(project: Path, fleet: Fleet, *args: str):
    env = {
        "DIRT_NODES_SSH_CONFIG": str(fleet.keys.ssh_config),
        "DIRT_NODES_CONNECT_TIMEOUT": "4",
        "DIRT_LOG_FILE": "",
        "COLUMNS": "1000",
    }
    return run_dirt("--project", str(project), *args, env=env, timeout=90)


def said(result) -> str:
    """Everything the command printed (the per-host lines go to stderr with the progress)."""
    return result.stdout + result.stderr


def listed(project: Path, fleet: Fleet) -> dict[str, dict]:
    result = dirt(project, fleet, "nodes", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {n["address"]: n for n in json.loads(result.stdout)}


def test_adding_ssh_hosts_stores_their_sys_info_and_options(project: Path, fleet: Fleet) -> None:
    result = dirt(project, fleet, "nodes", "add", "node-a", "node-b", "--python", "python3")
    assert result.returncode == 0, result.stderr
    assert "node-a" in said(result) and "node-b" in said(result)
    nodes = listed(project, fleet)
    assert set(nodes) == {"node-a", "node-b"}
    for node in nodes.values():
        assert node["enabled"] and node["online"]
        assert node["sys_info"]["cpu_count"] >= 1
        assert node["ssh"] == {"python": "python3"}


def test_an_ssh_config_alias_names_the_node_even_when_hostnames_repeat(
    project: Path, fleet: Fleet
) -> None:
    server = fleet.servers[0]
    fleet.keys.alias("same-host-again", server.host, server.port)
    assert dirt(project, fleet, "nodes", "add", "node-a", "same-host-again").returncode == 0
    nodes = listed(project, fleet)
    assert set(nodes) == {"node-a", "same-host-again"}
    assert nodes["node-a"]["hostname"] == nodes["same-host-again"]["hostname"]


def test_user_and_port_in_the_address_reach_the_host(project: Path, fleet: Fleet) -> None:
    server = fleet.servers[0]
    address = f"root@{server.host}:{server.port}"
    result = dirt(project, fleet, "nodes", "add", address)
    assert result.returncode == 0, result.stderr
    assert address in listed(project, fleet)


def test_a_closed_port_is_reported_as_connection_refused(project: Path, fleet: Fleet) -> None:
    closed = f"127.0.0.1:{free_port()}"
    result = dirt(project, fleet, "nodes", "add", "node-a", closed)
    assert result.returncode == 1
    assert f"{closed}: node {closed}: connection refused" in said(result)
    assert set(listed(project, fleet)) == {"node-a"}, "the good host is added all the same"


def test_an_unauthorised_key_is_reported_as_auth_refused(
    project: Path, fleet: Fleet, tmp_path: Path
) -> None:
    config = tmp_path / "stranger_ssh_config"
    keys = fleet.keys
    config.write_text(keys.ssh_config.read_text().replace(str(keys.user_key), str(keys.other_key)))
    result = dirt(project, fleet, "nodes", "add", "node-a", "--ssh-config", str(config))
    assert result.returncode == 1
    assert "auth refused (Permission denied)" in said(result)


def test_a_missing_python_is_reported(project: Path, fleet: Fleet) -> None:
    result = dirt(project, fleet, "nodes", "add", "node-a", "--python", "/nonexistent/python3")
    assert result.returncode == 1
    assert "no Python: '/nonexistent/python3' not found" in said(result)


def test_a_python_older_than_3_9_is_reported(project: Path, fleet: Fleet, tmp_path: Path) -> None:
    old = tmp_path / "python3.8"
    old.write_text("#!/bin/sh\necho '(3, 8)'\n")
    old.chmod(0o755)
    result = dirt(project, fleet, "nodes", "add", "node-a", "--python", str(old))
    assert result.returncode == 1
    assert "Python too old" in said(result) and "is 3.8, the agent needs 3.9" in said(result)


def test_an_address_nobody_answers_is_reported_as_no_route(
    project: Path, fleet: Fleet, namespaces: tuple[bool, str]
) -> None:
    if not namespaces[0]:
        pytest.skip(f"needs a network namespace of its own: {namespaces[1]}")
    void = fleet.unreachable_address()
    assert void is not None
    result = dirt(project, fleet, "nodes", "add", void)
    assert result.returncode == 1
    assert "no route" in said(result)


def test_strict_host_keys_refuse_an_unknown_host(project: Path, fleet: Fleet) -> None:
    fleet.keys.known_hosts.write_text("")
    result = dirt(project, fleet, "nodes", "add", "node-a", "--strict-host-keys")
    assert result.returncode == 1
    assert "host key verification failed" in said(result)


def test_unknown_host_keys_are_accepted_on_first_use(project: Path, fleet: Fleet) -> None:
    fleet.keys.known_hosts.write_text("")
    assert dirt(project, fleet, "nodes", "add", "node-a").returncode == 0
    assert os.path.getsize(fleet.keys.known_hosts) > 0
    result = dirt(project, fleet, "nodes", "add", "node-a", "--strict-host-keys")
    assert result.returncode == 0, said(result)
