"""A node whose environment holds a secret: no read shows its value (API, every page, CLI,
/metrics, the change feeds, the log), while a `requires` on that value still routes."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.conftest import run_dirt, wait_for
from tests.web.conftest import start_dirt, stop_dirt

SECRET = "hunter2"
NODE_ENV = {
    "MYSECRET": SECRET,
    "PROXY_URL": f"http://proxy-user:{SECRET}@proxy.example:3128",
}


def get(url: str, **headers: str) -> str:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode("utf-8"))


def post(url: str) -> str:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode("utf-8"))


def configure(project: Path) -> None:
    config = project / "dirt.toml"
    text = config.read_text()
    text = text.replace(
        'python = "python3"',
        'python = "python3"\nshow_environ = ["PATH", "HOME", "LANG", "PROXY_URL"]',
        1,
    ).replace("poll_interval = 0.05", "poll_interval = 0.02")
    config.write_text(text)


def task_of(url: str, record: str) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = json.loads(get(f"{url}api/records/{record}"))["tasks"]
    return tasks[0]


def test_a_node_secret_shows_nowhere_and_still_routes(project: Path) -> None:
    configure(project)
    seen: dict[str, str] = {}
    added = run_dirt("nodes", "add", "local", cwd=project, env=NODE_ENV)
    assert added.returncode == 0, added.stderr
    seen["dirt nodes add"] = added.stdout + added.stderr
    # A requirement on the hidden value routes: "hunt" is in it, "xyz" is not.
    docs = []
    for record, needle in (("r1", "hunt"), ("r2", "xyz")):
        docs.append({"_id": record, "type": "record"})
        docs.append(
            {
                "type": "task",
                "record_id": record,
                "name": "examples.simple",
                "requires": [f"{needle} in environ.MYSECRET"],
            }
        )
    (project / "docs.json").write_text(json.dumps(docs))
    made = run_dirt("submit", "docs.json", cwd=project)
    assert made.returncode == 0, made.stderr
    proc, url = start_dirt(project, "serve")
    feed = subprocess.Popen(
        ["curl", "-sN", "--max-time", "30", f"{url}events?since=0"], stdout=subprocess.PIPE
    )
    try:
        done = wait_for(lambda: task_of(url, "r1")["state"] == "succeeded", what="r1 to run")
        assert done
        waiting = task_of(url, "r2")
        assert waiting["state"] == "waiting"
        assert "xyz in environ.MYSECRET" in waiting["reason"]
        seen["POST disable"] = post(f"{url}api/nodes/local/disable")
        seen["POST enable"] = post(f"{url}api/nodes/local/enable")
        task_id = task_of(url, "r1")["_id"]
        for path in (
            "api/nodes",
            "api/records",
            "api/records/r1",
            "api/records/r2",
            f"api/tasks/{task_id}",
            "api/tasks?name=examples.simple",
            "api/changes?since=0",
            "metrics",
            "openapi.json",
            "",
            "nodes",
            "records/r1",
            "records/r2",
            "tasks/examples.simple",
        ):
            seen[path] = get(url + path)
        for path in ("", "nodes", "records/r1"):
            seen[f"{path} (live part)"] = get(url + path, **{"X-Dirt-Fragment": "1"})
        time.sleep(0.6)  # the live feed has sent the node's changes
    finally:
        code, log = stop_dirt(proc)
        feed.kill()
        events, _ = feed.communicate()
    assert code == 0, log
    seen["dirt serve's log"] = log
    seen["/events"] = events.decode()
    commands = (
        ("nodes", "list"),
        ("nodes", "list", "--json"),
        ("status", "r1", "--json"),
        ("audit",),
    )
    # Reads only: they run at once, as each `dirt` process takes 0.7-0.8 s to start.
    with ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda command: run_dirt(*command, cwd=project), commands))
    for command, result in zip(commands, results, strict=True):
        assert result.returncode == 0, result.stderr
        seen["dirt " + " ".join(command)] = result.stdout + result.stderr
    seen["dirt.log"] = (project / "dirt.log").read_text()

    leaks = [where for where, text in seen.items() if SECRET in text]
    assert leaks == [], f"{SECRET!r} shown by {leaks}"
    nodes = json.loads(seen["api/nodes"])
    environ = nodes[0]["sys_info"]["environ"]
    assert environ["MYSECRET"] == "***", "the name shows, not the value"
    assert environ["PROXY_URL"] == "http://proxy-user:***@proxy.example:3128"
    assert environ["PATH"] and environ["PATH"] != "***"
    # The CLI shows the node as the API does; what changes as it runs (last seen, load, which
    # master drives it) may differ between the two reads.
    (listed,) = json.loads(seen["dirt nodes list --json"])
    assert listed.keys() == nodes[0].keys()
    assert listed["sys_info"]["environ"] == environ
    assert {k: v for k, v in listed["sys_info"].items() if k != "load"} == {
        k: v for k, v in nodes[0]["sys_info"].items() if k != "load"
    }
    assert "MYSECRET" in seen["nodes"], "the system-info view lists the name"
    assert '"type": "node"' in seen["/events"] or '"type":"node"' in seen["/events"]
