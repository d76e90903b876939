"""The real `dirt` command, run as a subprocess, as a user would."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from dirt import __version__
from dirt.project import create_project
from tests.cli.conftest import serve
from tests.conftest import add_local_node, project_service, run_dirt, wait_for

SEED = Path(__file__).parents[2] / "src" / "dirt" / "seed" / "test_data.json"


def dirt_ok(*args: str, cwd: Path, timeout: float = 60) -> str:
    result = run_dirt(*args, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, f"dirt {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def status_json(cwd: Path, *args: str) -> object:
    return json.loads(dirt_ok("status", *args, "--json", cwd=cwd))


def state_of(project: Path, record_id: str) -> str:
    """The state of the record's one task, read from the store in-process: waits poll this, as
    a `dirt status` process costs 0.7-0.8 s to start; what a test asserts, `dirt status` shows."""
    with project_service(project) as service:
        (task,) = service.record_detail(record_id).tasks
        return task.state.value


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_version() -> None:
    assert run_dirt("--version").stdout.strip() == f"dirt, version {__version__}"


def test_create_makes_a_project_and_says_what_next(tmp_path: Path) -> None:
    result = run_dirt("create", "proj", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Created project proj in" in result.stdout
    assert "Next: cd proj && dirt nodes add local && dirt serve" in result.stdout
    # The very project the fixtures make in-process with create_project.
    made, reference = tmp_path / "proj", create_project(tmp_path / "reference" / "proj")
    assert (made / "tasks" / "examples" / "simple.py").is_file()
    assert files_of(made) == files_of(reference)
    assert status_json(tmp_path / "proj") == []


def test_create_refuses_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    result = run_dirt("create", "x", cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr


def test_outside_a_project_a_one_line_error_says_what_to_do(tmp_path: Path) -> None:
    result = run_dirt("status", cwd=tmp_path)
    assert result.returncode == 2
    assert "dirt create NAME" in result.stderr and "--project" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_project_is_found_from_a_subfolder_or_named(cli_project: Path, tmp_path: Path) -> None:
    assert status_json(cli_project / "tasks") == []
    assert (
        json.loads(dirt_ok("--project", str(cli_project), "status", "--json", cwd=tmp_path)) == []
    )
    result = run_dirt("status", "--json", cwd=tmp_path, env={"DIRT_PROJECT": str(cli_project)})
    assert json.loads(result.stdout) == []


def test_submit_the_seed_file_and_list_it(cli_project: Path) -> None:
    out = dirt_ok("submit", str(SEED), cwd=cli_project)
    assert "record r123 added" in out
    listing = status_json(cli_project)
    assert [r["_id"] for r in listing] == ["r124", "r123"]
    assert listing[1] == {
        "_id": "r123",
        "type": "record",
        "description": "this is revision one two three",
        "created": 1315347385,
        "ntasks": 2,
        "counts": {"waiting": 2, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0},
    }


def test_a_bad_submission_lists_every_problem_and_stores_nothing(cli_project: Path) -> None:
    bad = cli_project / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "docs": [
                    {"_id": "r1", "type": "record"},
                    {"type": "task", "record_id": "r1", "name": "no.such"},
                    {"type": "task", "record_id": "r2", "name": "examples.simple", "kwargs": "x"},
                ]
            }
        )
    )
    result = run_dirt("submit", str(bad), cwd=cli_project)
    assert result.returncode == 2
    assert "'no.such' is not a module under tasks/" in result.stderr
    assert "record 'r2' exists neither" in result.stderr
    assert "'kwargs' must be an object" in result.stderr
    assert status_json(cli_project) == []


def test_broken_json_is_a_clear_error(cli_project: Path) -> None:
    (cli_project / "broken.json").write_text("[{")
    result = run_dirt("submit", "broken.json", cwd=cli_project)
    assert result.returncode == 2 and "not valid JSON" in result.stderr


def test_submit_record_with_tasks_then_add_to_it(cli_project: Path) -> None:
    dirt_ok("submit", "r9", "-d", "nine", "-t", "examples.simple", cwd=cli_project)
    dirt_ok(
        "submit",
        "r9",
        "-t",
        "examples.arguments",
        "--kwargs",
        '{"cat": 1, "dog": 2}',
        "--requires",
        "architecture not sparc",
        cwd=cli_project,
    )
    detail = status_json(cli_project, "r9")
    assert detail["record"]["description"] == "nine"
    assert sorted(t["name"] for t in detail["tasks"]) == ["examples.arguments", "examples.simple"]


def test_nodes_add_list_disable_enable_remove(cli_project: Path) -> None:
    added = run_dirt("nodes", "add", "local", "--slots", "3", cwd=cli_project)
    assert added.returncode == 0 and "local:" in added.stderr and "3 slot(s)" in added.stderr
    (node,) = json.loads(dirt_ok("nodes", "list", "--json", cwd=cli_project))
    assert node["address"] == "local" and node["slots"] == 3 and node["enabled"]
    info = node["sys_info"]
    for key in (
        "cpu_count",
        "platform",
        "architecture",
        "environ",
        "path",
        "version_info",
        "pythonpath",
        "hostname",
        "fqdn",
        "ip",
        "system",
        "python",
        "memory_total",
    ):
        assert key in info, key
    dirt_ok("nodes", "disable", "local", cwd=cli_project)
    assert not json.loads(dirt_ok("nodes", "list", "--json", cwd=cli_project))[0]["enabled"]
    dirt_ok("updatenodes", "local", cwd=cli_project)
    (node,) = json.loads(dirt_ok("nodes", "list", "--json", cwd=cli_project))
    assert node["slots"] == 3 and not node["enabled"]
    dirt_ok("nodes", "enable", "local", cwd=cli_project)
    dirt_ok("nodes", "remove", "local", cwd=cli_project)
    assert json.loads(dirt_ok("nodes", "list", "--json", cwd=cli_project)) == []


def test_a_bad_node_address_is_refused(cli_project: Path) -> None:
    result = run_dirt("nodes", "add", "me@host:99999", cwd=cli_project)
    assert result.returncode == 2 and "port '99999' is not 1-65535" in result.stderr


def test_submit_wait_runs_to_completion_and_exits_1_on_failure(cli_project: Path) -> None:
    add_local_node(cli_project)
    (cli_project / "tasks" / "fails.py").write_text(
        "def execute():\n    return {'success': False, 'reason': 'red'}\n"
    )
    server = serve(cli_project)
    try:
        ok = run_dirt("submit", "r1", "-t", "examples.simple", "--wait", cwd=cli_project)
        assert ok.returncode == 0, ok.stderr
        bad = run_dirt(
            "submit", "r2", "-t", "fails", "-t", "examples.simple", "--wait", cwd=cli_project
        )
        assert bad.returncode == 1 and "red" in bad.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def test_sigterm_returns_running_tasks_to_waiting_and_exits_0(cli_project: Path) -> None:
    add_local_node(cli_project)
    (cli_project / "tasks" / "sleepy.py").write_text(
        "import time\ndef execute():\n    time.sleep(60)\n    return {'success': True}\n"
    )
    dirt_ok("submit", "r1", "-t", "sleepy", cwd=cli_project)
    server = serve(cli_project, DIRT_DISPATCH_STOP_GRACE="1")  # running tasks get 1 s, not 10
    wait_for(
        lambda: state_of(cli_project, "r1") == "running",
        what="the task to start",
    )
    server.send_signal(signal.SIGTERM)
    output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    (task,) = status_json(cli_project, "r1")["tasks"]
    assert task["state"] == "waiting" and task["node"] is None
    assert "returned to waiting" in output
    assert "may finish within 1 s" in output


def test_after_kill_9_the_next_start_returns_orphans_to_waiting(cli_project: Path) -> None:
    add_local_node(cli_project)
    flag = cli_project / "second-run"
    (cli_project / "tasks" / "once.py").write_text(
        "import os, time\n"
        f"FLAG = {str(flag)!r}\n"
        "def execute():\n"
        "    if not os.path.exists(FLAG):\n"
        "        time.sleep(60)\n"
        "    return {'success': True}\n"
    )
    dirt_ok("submit", "r1", "-t", "once", cwd=cli_project)
    server = serve(cli_project)
    wait_for(
        lambda: state_of(cli_project, "r1") == "running",
        what="the task to start",
    )
    server.kill()
    server.communicate(timeout=10)
    assert status_json(cli_project, "r1")["tasks"][0]["state"] == "running"
    flag.write_text("")
    server = serve(cli_project)
    try:
        wait_for(
            lambda: state_of(cli_project, "r1") == "succeeded",
            what="the orphan to run again",
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    (task,) = status_json(cli_project, "r1")["tasks"]
    assert [a["outcome"] for a in task["attempts"]] == ["lost", "succeeded"]


def test_status_of_a_record_shows_each_task(cli_project: Path) -> None:
    dirt_ok("submit", str(SEED), cwd=cli_project)
    detail = status_json(cli_project, "r123")
    assert detail["record"]["_id"] == "r123"
    assert set(detail["tasks"][0]) >= {
        "_id",
        "name",
        "state",
        "node",
        "created",
        "started",
        "completed",
        "reason",
        "results",
    }
    text = dirt_ok("status", "r123", cwd=cli_project)
    assert "examples.attachments" in text and "waiting" in text


def test_status_of_an_unknown_record_is_an_error(cli_project: Path) -> None:
    result = run_dirt("status", "nope", cwd=cli_project)
    assert result.returncode == 2 and "no record 'nope'" in result.stderr


def test_demo_runs_the_sample_records_to_success(tmp_path: Path) -> None:
    result = run_dirt("demo", "demo", "--once", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "r123 examples.attachments" in result.stdout
    detail = json.loads(run_dirt("status", "r123", "--json", cwd=tmp_path / "demo").stdout)
    assert {t["state"] for t in detail["tasks"]} == {"succeeded"}
    assert len(detail["tasks"]) == 3
    (attachments,) = [t["attachments"] for t in detail["tasks"] if t["attachments"]]
    assert attachments[0]["filename"] == "build.log"
    again = run_dirt("demo", "demo", "--once", cwd=tmp_path, timeout=120)
    assert again.returncode == 0 and "already stored" in again.stdout
    time.sleep(0)
