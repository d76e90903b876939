"""Settings: found by walking up to dirt.toml, then DIRT_* variables, then flags."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dirt.config import HostSettings, NodeDefaults, find_project, load_settings
from dirt.errors import ConfigError, ProjectNotFoundError


def test_the_project_is_found_from_a_subfolder(project: Path) -> None:
    deep = project / "tasks" / "examples"
    assert find_project(deep) == project


def test_outside_a_project_the_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFoundError, match="dirt create NAME"):
        find_project(tmp_path)


def test_the_default_store_is_a_sqlite_file_in_the_project(project: Path) -> None:
    settings = load_settings(project, environ={})
    assert settings.database_url == f"sqlite:///{project / 'proj.sqlite'}"


def test_dirt_database_url_overrides_the_store(project: Path) -> None:
    settings = load_settings(project, environ={"DIRT_DATABASE_URL": "sqlite:////tmp/other.db"})
    assert settings.database_url == "sqlite:////tmp/other.db"


def test_environment_variables_override_the_file(project: Path) -> None:
    settings = load_settings(
        project, environ={"DIRT_DISPATCH_ISOLATION": "thread", "DIRT_DISPATCH_MAX_ATTEMPTS": "5"}
    )
    assert settings.dispatch.isolation == "thread"
    assert settings.dispatch.max_attempts == 5


def test_dirt_project_names_the_project(project: Path) -> None:
    assert load_settings(environ={"DIRT_PROJECT": str(project)}).project_dir == project


def test_unknown_keys_and_bad_values_are_all_reported(project: Path) -> None:
    (project / "dirt.toml").write_text(
        '[project]\nname = "p"\ncolour = "red"\n[dispatch]\nisolation = "vm"\n'
        'max_attempts = "three"\n[extras]\nx = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(project, environ={})
    message = str(info.value)
    assert "project.colour: unknown key" in message
    assert "dispatch.isolation: 'vm' is not one of process, thread" in message
    assert "dispatch.max_attempts: expected int" in message
    assert "unknown section [extras]" in message


def test_broken_toml_is_reported_with_the_file(project: Path) -> None:
    (project / "dirt.toml").write_text("[project\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(project, environ={})


# ---- per-node tables: [nodes.hosts."ADDRESS"] -------------------------------------------------


def test_a_host_table_sets_one_nodes_options_and_leaves_the_rest_unset(project: Path) -> None:
    with (project / "dirt.toml").open("a") as f:
        f.write(
            '\n[nodes.hosts."build1"]\nuser = "ci"\nport = 2222\n'
            'identity_file = "~/.ssh/ci_ed25519"\nhost_key_checking = "strict"\nslots = 4\n'
            '\n[nodes.hosts."ci@10.0.0.7:2200"]\nconnect_timeout = 30\n'
        )
    nodes = load_settings(project, environ={}).nodes
    assert set(nodes.hosts) == {"build1", "ci@10.0.0.7:2200"}
    build1 = nodes.host("build1")
    assert (build1.user, build1.port, build1.slots) == ("ci", 2222, 4)
    assert build1.python is None and build1.ssh_config is None
    assert build1.connection_options() == {
        "user": "ci",
        "port": 2222,
        "identity_file": "~/.ssh/ci_ed25519",
        "host_key_checking": "strict",
    }
    assert nodes.host("ci@10.0.0.7:2200").connect_timeout == 30.0
    assert nodes.host("elsewhere") == HostSettings(), "a node without a table gets no options"


def test_a_host_table_accepts_every_nodes_connection_key_and_slots() -> None:
    # show_environ says what reads show of every node: it has no per-host meaning.
    nodes_keys = {f.name for f in dataclasses.fields(NodeDefaults)} - {"hosts", "show_environ"}
    assert {f.name for f in dataclasses.fields(HostSettings)} == nodes_keys | {"slots"}


def test_every_problem_in_host_tables_is_reported_at_once(project: Path) -> None:
    with (project / "dirt.toml").open("a") as f:
        f.write(
            '\n[nodes.hosts."build1"]\nusr = "ci"\nport = "22"\nslots = 0\n'
            '\n[nodes.hosts."build2"]\nhost_key_checking = "maybe"\nconnect_timeout = true\n'
            '\n[nodes.hosts]\nbuild3 = "fast"\n'
        )
    with pytest.raises(ConfigError) as info:
        load_settings(project, environ={})
    message = str(info.value)
    assert (
        'nodes.hosts."build1".usr: unknown key (known in [nodes.hosts."build1"]: user,' in message
    )
    assert "nodes.hosts.\"build1\".port: expected int, got '22'" in message
    assert 'nodes.hosts."build1".slots: must be at least 1, got 0' in message
    assert (
        "nodes.hosts.\"build2\".host_key_checking: 'maybe' is not one of accept-new, strict, no"
        in message
    )
    assert 'nodes.hosts."build2".connect_timeout: expected float, got True' in message
    assert "[nodes.hosts.\"build3\"] must be a table, got 'fast'" in message


def test_hosts_must_be_a_table_of_tables(project: Path) -> None:
    text = (project / "dirt.toml").read_text().replace("[nodes]\n", '[nodes]\nhosts = "build1"\n')
    (project / "dirt.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"\[nodes.hosts\] must be a table of tables"):
        load_settings(project, environ={})


def test_flags_change_only_the_host_table_keys_they_give(project: Path) -> None:
    with (project / "dirt.toml").open("a") as f:
        f.write('\n[nodes.hosts."build1"]\nuser = "ci"\nport = 2222\n')
    overrides = {"nodes": {"hosts": {"build1": {"port": 2200}, "build2": {"slots": 2}}}}
    nodes = load_settings(project, overrides=overrides, environ={}).nodes
    assert (nodes.host("build1").user, nodes.host("build1").port) == ("ci", 2200)
    assert nodes.host("build2").slots == 2


def test_limits_are_sizes_in_bytes_or_with_a_unit(project: Path) -> None:
    (project / "dirt.toml").write_text(
        '[dispatch]\noutput_limit = "1.5 MiB"\nattachment_limit = 1000\n'
        '[storage]\nblobs = "/mnt/shared/dirt-blobs"\n'
    )
    settings = load_settings(project, environ={"DIRT_DISPATCH_ATTACHMENT_LIMIT": "2GB"})
    assert settings.dispatch.output_limit == 1536 * 1024
    assert settings.dispatch.attachment_limit == 2 * 1000**3
    assert settings.blobs_path == Path("/mnt/shared/dirt-blobs")


def test_the_limits_and_the_blob_store_have_defaults(project: Path) -> None:
    settings = load_settings(project, environ={})
    assert (settings.dispatch.output_limit, settings.dispatch.attachment_limit) == (
        16 << 20,
        4 << 30,
    )
    assert settings.blobs_path == project / "blobs"


def test_bad_sizes_are_reported_together(project: Path) -> None:
    (project / "dirt.toml").write_text('[dispatch]\noutput_limit = "lots"\nattachment_limit = -1\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(project, overrides={"dispatch": {"output_limit": 1000}}, environ={})
    message = str(caught.value)
    assert "dispatch.output_limit: expected a size in bytes" in message and "'lots'" in message
    assert "dispatch.attachment_limit: must be at least 0, got -1" in message
    assert "dispatch.output_limit: must be at least 131072, got 1000" in message


def test_batch_settings_come_from_the_file_and_the_environment(project: Path) -> None:
    settings = load_settings(
        project,
        overrides={"batch": {"python": "/opt/py/bin/python3"}},
        environ={"DIRT_BATCH_POLL_INTERVAL": "2.5"},
    )
    assert settings.batch.poll_interval == 2.5
    assert settings.batch.python == "/opt/py/bin/python3"


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"poll_interval": 0.01}, "batch.poll_interval: must be at least 0.1"),
        ({"poll_interval": 600}, "batch.poll_interval: at most 60 s"),
        ({"poll_interval": "often"}, "batch.poll_interval"),
        ({"python": " "}, "batch.python: ' ' is not a command"),
        ({"python": "python3\nrm -rf ~"}, "batch.python"),
    ],
)
def test_bad_batch_settings_are_refused_with_a_reason(
    project: Path, values: dict[str, object], said: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_settings(project, overrides={"batch": values}, environ={})
