"""`dirt status --json`, `dirt nodes list --json` and the API show the same records, tasks,
attempts, attachments and nodes (one view, dirt.views): run side by side on one store."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dirt.models import Attachment, TaskState
from dirt.service import Service
from dirt.views import short_master
from tests.conftest import run_dirt
from tests.web.conftest import finish_task, run_task

SIMPLE_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc95a4"
ATTACH_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc9858"


def cli_json(service: Service, *args: str) -> Any:
    result = run_dirt("--project", str(service.settings.project_dir), *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ran(service: Service, node: str) -> None:
    """r123: one task succeeded with an attachment, one failed; r124's task waits, saying why."""
    log = Attachment(ATTACH_R123, "build.log", "Build log", "text/plain", 3, b"ok\n", time.time())
    run_task(service, ATTACH_R123, node)
    finish_task(service, ATTACH_R123, node, results={"success": True, "n": 1}, attachments=[log])
    run_task(service, SIMPLE_R123, node)
    finish_task(service, SIMPLE_R123, node, TaskState.FAILED, reason="Traceback\nValueError: x")


def test_a_record_and_its_tasks_look_the_same(
    seeded: Service, client: TestClient, node: str
) -> None:
    ran(seeded, node)
    shown = {r: cli_json(seeded, "status", r) for r in ("r123", "r124")}
    for record_id, cli in shown.items():
        api = client.get(f"/api/records/{record_id}").json()
        assert cli["record"] == api["record"]
        # The one difference, documented: the CLI's `attempts` is the list of attempts.
        assert cli["tasks"] == [{**t, "attempts": t["attempt_history"]} for t in api["tasks"]]
        for task in api["tasks"]:
            assert task == client.get(f"/api/tasks/{task['_id']}").json()
    failed = next(t for t in shown["r123"]["tasks"] if t["_id"] == SIMPLE_R123)
    assert failed["state"] == "failed" and failed["reason"].endswith("ValueError: x")
    assert [a["outcome"] for a in failed["attempts"]] == ["failed"]
    (attached,) = [t["attachments"] for t in shown["r123"]["tasks"] if t["attachments"]]
    assert attached[0]["url"] == f"/api/tasks/{ATTACH_R123}/attachments/build.log"
    assert client.get(attached[0]["url"]).content == b"ok\n"


def test_a_waiting_task_says_why_in_both(seeded: Service, client: TestClient, node: str) -> None:
    ran(seeded, node)
    (task,) = client.get("/api/records/r124").json()["tasks"]
    assert (
        task["reason"]
        == task["waiting_reason"]
        == "no dispatcher is running (none has run on this store yet): start one with `dirt serve`"
    )
    assert cli_json(seeded, "status", "r124")["tasks"][0]["reason"] == task["reason"]


def test_the_record_list_looks_the_same(seeded: Service, client: TestClient, node: str) -> None:
    ran(seeded, node)
    listing = cli_json(seeded, "status")
    assert listing == client.get("/api/records").json()["records"]
    r123 = next(r for r in listing if r["_id"] == "r123")
    assert r123["counts"] == {s.value: 0 for s in TaskState} | {"succeeded": 1, "failed": 1}


def test_the_node_list_looks_the_same(seeded: Service, client: TestClient, node: str) -> None:
    run_task(seeded, SIMPLE_R123, node)
    nodes = cli_json(seeded, "nodes", "list")
    assert nodes == client.get("/api/nodes").json()
    assert nodes[0]["address"] == node and nodes[0]["running"] == 1


def test_the_queue_looks_the_same(seeded: Service, client: TestClient) -> None:
    seeded.submit_tasks("heavy", ["examples.simple"], extra={"share": 2})
    queue = cli_json(seeded, "queue")
    assert queue == client.get("/api/queue").json()
    assert [r["record_id"] for r in queue["queue"]] == ["r123", "r124", "heavy"]


def test_the_dispatchers_look_the_same_and_the_nodes_page_lists_them(
    seeded: Service, client: TestClient, node: str
) -> None:
    seeded.register_dispatcher(15)
    assert seeded.claim_nodes([node], time.time()) == [node]
    run_task(seeded, SIMPLE_R123, node)
    listing = cli_json(seeded, "dispatchers")
    assert listing == client.get("/api/dispatchers").json()
    (shown,) = listing
    assert (shown["id"], shown["pid"], shown["state"], shown["live"]) == (
        seeded.master_id,
        os.getpid(),
        "running",
        True,
    )
    assert (shown["nodes"], shown["running"]) == ([node], 1)
    assert shown["heartbeat"] <= shown["lease_until"] == pytest.approx(shown["heartbeat"] + 15)
    assert cli_json(seeded, "nodes", "list")[0]["driver"] == seeded.master_id
    page = client.get("/nodes").text
    short = short_master(seeded.master_id)
    assert f'<tr data-dispatcher="{seeded.master_id}">' in page
    row = page.split(f'<tr data-dispatcher="{seeded.master_id}">')[1].split("</tr>")[0]
    assert short in row and f">{os.getpid()}<" in row and f">{node}<" in row
    assert f'<span title="{seeded.master_id}">{short}</span>' in page  # the node's driver


def test_the_dispatchers_in_the_terminal(seeded: Service, node: str) -> None:
    project = str(seeded.settings.project_dir)
    idle = run_dirt("--project", project, "dispatchers")
    assert "no dispatcher is running" in idle.stdout
    seeded.register_dispatcher(15)
    seeded.claim_nodes([node], time.time())
    table = run_dirt("--project", project, "dispatchers").stdout
    (row,) = [line for line in table.splitlines() if short_master(seeded.master_id) in line]
    assert f" {os.getpid()} " in row and " running " in row and f" {node} " in row
    nodes = run_dirt("--project", project, "nodes", "list").stdout
    assert short_master(seeded.master_id) in nodes
