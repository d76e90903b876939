"""The served agent.py runs tasks: on a plain Python with nothing installed, from a host the
master cannot reach, as a node like the others."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from dirt.models import NodeKind, TaskState
from dirt.service import Service
from tests.agents.conftest import PYTHON, Master, Network, StartAgent, submit
from tests.conftest import wait_finished, wait_for

CHATTY = """\
import sys


def execute():
    print("hello from the agent")
    print("to stderr", file=sys.stderr)
    with open("report.txt", "w") as out:
        out.write("x" * 300000)
    return {
        "success": True,
        "attachments": [
            {"filename": "small.bin", "contents": bytes(range(256)), "link_name": "bytes"},
            {"filename": "note.txt", "contents": "a note", "link_name": "text"},
            {"filename": "report.txt", "path": "report.txt", "link_name": "a file"},
            {"filename": "big.txt", "contents": "y" * 400000, "link_name": "big text"},
        ],
    }
"""


def test_the_agent_file_needs_nothing_but_python(agent_file: Path) -> None:
    # The folder it runs from has no dirt, and the clean environment finds none elsewhere.
    found = subprocess.run(
        ["env", "-i", PYTHON, "-c", "import dirt"], cwd=agent_file.parent, capture_output=True
    )
    assert found.returncode != 0
    usage = subprocess.run(
        ["env", "-i", PYTHON, str(agent_file), "--help"], capture_output=True, text=True
    )
    assert usage.returncode == 0
    assert "agent.py [-h] [--token TOKEN] [--slots SLOTS] [--name NAME] [--once]" in usage.stdout


def test_an_agent_behind_nat_runs_tasks_with_output_and_attachments(
    service: Service,
    master: Master,
    network: Network,
    start_agent: StartAgent,
    add_task_module,  # type: ignore[no-untyped-def]
) -> None:
    if network.outbound is not None:
        assert network.outbound.links() == ["lo"]  # nothing leads in: only its loopback
    add_task_module("agent.chatty", CHATTY)
    start_agent("lab-1", slots=2)
    record = service.submit_tasks("r-nat", ["agent.chatty", "examples.simple"])
    ids = [t.id for t in record.tasks]
    chatty, simple = wait_finished(service, ids)
    assert chatty.state is TaskState.SUCCEEDED, chatty.reason
    assert simple.state is TaskState.SUCCEEDED
    assert chatty.node == simple.node == "lab-1"
    assert "hello from the agent" in (chatty.output or "")
    assert "to stderr" in (chatty.output or "")
    files = {a.filename for a in service.task_detail(chatty.id)[1]}
    assert files == {"small.bin", "note.txt", "report.txt", "big.txt"}
    expected = {
        "small.bin": bytes(range(256)),
        "report.txt": b"x" * 300000,
        "big.txt": b"y" * 400000,
        "note.txt": b"a note",
    }
    for name, contents in expected.items():
        with service.open_attachment(chatty.id, name) as opened:
            assert opened.file.read() == contents, name
    node = service.node("lab-1")
    assert node.kind is NodeKind.AGENT and node.online and node.slots == 2
    assert node.sys_info["environ"]["AGENT_LABEL"] == "lab-1"
    with urllib.request.urlopen(master.url + "api/nodes", timeout=10) as answer:
        shown = {n["address"]: n for n in json.load(answer)}
    assert shown["lab-1"]["kind"] == "agent" and shown["lab-1"]["online"]
    page = urllib.request.Request(master.url + "nodes", headers={"Accept": "text/html"})
    with urllib.request.urlopen(page, timeout=10) as answer:
        assert '<td class="kind">agent</td>' in answer.read().decode()


def test_tasks_go_only_to_agents_that_meet_their_requirements(
    service: Service, start_agent: StartAgent
) -> None:
    start_agent("gpu-box", env={"CUDA_HOME": "/opt/cuda"})
    start_agent("plain-box")
    gpu = submit(service, *({"seconds": 0.05} for _ in range(6)), requires=["CUDA_HOME in environ"])
    anywhere = submit(service, *({"seconds": 0.05} for _ in range(6)))
    done = wait_finished(service, gpu + anywhere)
    assert all(t.state is TaskState.SUCCEEDED for t in done)
    assert {t.node for t in done if t.id in gpu} == {"gpu-box"}
    assert {t.results["agent"] for t in done if t.id in gpu} == {"gpu-box"}


def test_once_runs_one_task_and_exits(service: Service, start_agent: StartAgent) -> None:
    ids = submit(service, {}, {})
    agent = start_agent("one-shot", 1, "--once")
    assert agent.wait() == 0
    states = sorted(t.state.value for t in service.tasks(ids))
    assert states == ["succeeded", "waiting"]


def test_a_disabled_agent_takes_nothing_until_enabled(
    service: Service, start_agent: StartAgent
) -> None:
    start_agent("lab-2")
    service.set_node_enabled("lab-2", False)
    ids = submit(service, {})
    wait_for(lambda: service.node("lab-2").online, what="the agent polling")
    assert service.task(ids[0]).state is TaskState.WAITING
    service.set_node_enabled("lab-2", True)
    assert wait_finished(service, ids)[0].node == "lab-2"
