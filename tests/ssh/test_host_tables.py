"""Per-node settings in dirt.toml, ``[nodes.hosts."ADDRESS"]``, and their precedence: options
given to `dirt nodes add` (stored with the node) > the host's table > the ``[nodes]`` defaults.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dirt.config import HostSettings, NodeDefaults, load_settings
from dirt.dispatch.runner import node_options, ssh_options
from dirt.documents import parse_address
from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, run_dirt, wait_finished
from tests.ssh.sshd import Fleet, free_port

WHERE = """\
import os

def execute():
    return {"success": True, "host": os.environ.get("DIRT_TEST_HOST")}
"""


def toml(value: Any) -> str:
    return json.dumps(value)  # a JSON string or number is a TOML one too


def configure(
    project: Path, nodes: dict[str, Any], hosts: dict[str, dict[str, Any]] | None = None
) -> None:
    """Add keys to the project's [nodes] table and append [nodes.hosts."ADDRESS"] tables."""
    path = project / "dirt.toml"
    keys = "".join(f"{k} = {toml(v)}\n" for k, v in nodes.items())
    text = path.read_text().replace("[nodes]\n", f"[nodes]\n{keys}", 1)
    for address, table in (hosts or {}).items():
        text += f"\n[nodes.hosts.{toml(address)}]\n"
        text += "".join(f"{k} = {toml(v)}\n" for k, v in table.items())
    path.write_text(text)


def bare_ssh_config(fleet: Fleet, folder: Path) -> str:
    """A client config that names no user, port or key: only the run's known_hosts."""
    path = folder / "bare_ssh_config"
    path.write_text(
        "Host *\n"
        "    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {fleet.keys.known_hosts}\n"
        "    GlobalKnownHostsFile /dev/null\n"
        "    LogLevel ERROR\n"
    )
    return str(path)


def dirt(project: Path, *args: str):
    return run_dirt("--project", str(project), *args, env={"DIRT_LOG_FILE": ""}, timeout=90)


@contextmanager
def dispatching(project: Path) -> Iterator[Service]:
    """The project's service, as dirt.toml configures it, with a dispatcher running."""
    overrides = {"dispatch": {"poll_interval": 0.02}, "log": {"file": ""}}
    service = Service(load_settings(project, overrides=overrides, environ={}))
    dispatcher = RunningDispatcher(service)
    try:
        yield service
    finally:
        dispatcher.stop()
        service.close()


def run_one_task(project: Path) -> Any:
    with dispatching(project) as service:
        [task_id] = [t.id for t in service.submit_tasks("r1", ["t.where"]).tasks]
        [task] = wait_finished(service, [task_id], timeout=60)
    return task


@pytest.fixture
def where(add_task_module: Callable[[str, str], str]) -> None:
    add_task_module("t.where", WHERE)


@pytest.mark.ssh
def test_a_node_reached_only_through_its_host_table_is_added_and_runs_a_task(
    project: Path, fleet: Fleet, tmp_path: Path, where: None
) -> None:
    server = fleet.servers[0]
    keys = fleet.keys
    configure(
        project,
        # [nodes] defaults that cannot log in: every value that works is in the host table.
        {
            "ssh_config": bare_ssh_config(fleet, tmp_path),
            "connect_timeout": 4,
            "user": "nobody",
            "port": free_port(),
            "identity_file": str(keys.other_key),
        },
        {server.host: {"user": "root", "port": server.port, "identity_file": str(keys.user_key)}},
    )
    result = dirt(project, "nodes", "add", server.host)
    assert result.returncode == 0, result.stdout + result.stderr
    [node] = json.loads(dirt(project, "nodes", "list", "--json").stdout)
    assert node["address"] == server.host and node["ssh"] == {}, "nothing came from flags"
    task = run_one_task(project)
    assert task.state is TaskState.SUCCEEDED, task.reason
    assert (task.node, task.results["host"]) == (server.host, server.name)


@pytest.mark.ssh
def test_options_given_to_nodes_add_win_over_the_host_table_for_every_connection(
    project: Path, fleet: Fleet, tmp_path: Path, where: None
) -> None:
    server = fleet.servers[0]
    keys = fleet.keys
    configure(
        project,
        {"ssh_config": bare_ssh_config(fleet, tmp_path), "connect_timeout": 4, "user": "root"},
        # a table that cannot log in: a closed port and a key no server authorises
        {server.host: {"port": free_port(), "identity_file": str(keys.other_key)}},
    )
    flags = ["--port", str(server.port), "--identity", str(keys.user_key)]
    result = dirt(project, "nodes", "add", server.host, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    task = run_one_task(project)  # the dispatcher's own connection: stored flags win again
    assert task.state is TaskState.SUCCEEDED, task.reason
    assert task.node == server.host


def test_each_option_comes_from_flags_then_the_host_table_then_nodes() -> None:
    defaults = NodeDefaults(user="d", port=2201, python="pyd", ssh_config="d.conf")
    defaults.hosts["build1"] = HostSettings(user="h", port=2202, python="pyh", slots=3)
    options = node_options(defaults, {"user": "flag"}, "build1")
    assert (options.user, options.port, options.python) == ("flag", 2202, "pyh")
    assert options.ssh_config == "d.conf", "a key the table leaves out comes from [nodes]"
    assert node_options(defaults, {"user": "flag"}, "build2").port == 2201, "no table: [nodes]"
    in_address = ssh_options(parse_address("root@build1:22"), options)
    assert in_address[-4:] == ["-p", "22", "-l", "root"], "user@ and :port beat all three"


def test_slots_in_the_host_table_are_used_when_nodes_add_gives_none(project: Path) -> None:
    configure(project, {}, {"local": {"slots": 3}})
    assert dirt(project, "nodes", "add", "local").returncode == 0
    [node] = json.loads(dirt(project, "nodes", "list", "--json").stdout)
    assert node["slots"] == 3


def test_slots_given_to_nodes_add_win_over_the_host_table(project: Path) -> None:
    configure(project, {}, {"local": {"slots": 3}})
    assert dirt(project, "nodes", "add", "local", "--slots", "1").returncode == 0
    [node] = json.loads(dirt(project, "nodes", "list", "--json").stdout)
    assert node["slots"] == 1
