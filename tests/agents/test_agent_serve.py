"""Agents with the whole of dirt: `dirt serve` over HTTPS, a dispatcher driving a local node
beside them, and the CLI (`dirt token create --scope agent`, `dirt agent`, `dirt nodes list`)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from dirt.models import TaskState
from dirt.service import Service
from tests.agents.conftest import Master, Network, StartAgent, isolated, submit
from tests.conftest import RunningDispatcher, run_dirt, wait_finished, wait_for
from tests.web.conftest import start_dirt, stop_dirt


def test_agents_reach_dirt_serve_over_https_with_the_ca_they_are_given(
    project: Path, service: Service, certificate: tuple[Path, Path], start_agent: StartAgent
) -> None:
    cert, key = certificate
    proc, url = start_dirt(project, "serve", "--certfile", str(cert), "--keyfile", str(key))
    net = Network(int(url.rsplit(":", 1)[1].strip("/")), isolated(), scheme="https")
    try:
        start_agent("tls-box", 1, "--ca", str(cert), via=net)
        ids = submit(service, {}, {})
        assert {t.state for t in wait_finished(service, ids)} == {TaskState.SUCCEEDED}
        stranger = start_agent("no-ca", via=net, wait=False)
        assert stranger.wait() == 1
        assert "certificate is not trusted" in stranger.log and "--ca FILE" in stranger.log
    finally:
        net.close()
        code, log = stop_dirt(proc)
    assert code == 0, log


def test_an_agent_and_a_dispatcher_never_run_the_same_task(
    service: Service,
    local_node: str,
    start_dispatcher: Callable[[Service], RunningDispatcher],
    start_agent: StartAgent,
) -> None:
    start_agent("agent-a", 2)
    start_agent("agent-b", 2)
    start_dispatcher(service)
    ids = submit(service, *({"seconds": 0.02} for _ in range(60)))
    done = wait_finished(service, ids, timeout=60)
    assert all(t.state is TaskState.SUCCEEDED and t.attempts == 1 for t in done)
    ran = Counter(t.node for t in done)
    assert set(ran) <= {"local", "agent-a", "agent-b"} and sum(ran.values()) == 60
    assert ran["local"] and ran["agent-a"] + ran["agent-b"]  # they did take turns
    for task_id in ids:
        assert len(service.task_detail(task_id)[2]) == 1  # one attempt each, by one runner


def test_an_idle_agent_picks_up_a_new_task_at_once(
    service: Service, start_agent: StartAgent
) -> None:
    start_agent("idle")
    wait_for(lambda: service.node("idle").online, what="the agent polling")
    time.sleep(0.3)  # its request for work is held, waiting
    [task_id] = submit(service, {})
    submitted = time.time()
    [task] = wait_finished(service, [task_id])
    assert task.started is not None and task.started - submitted < 1.0


def test_the_agent_from_an_installed_dirt_and_the_cli(
    project: Path, service: Service, master: Master
) -> None:
    made = run_dirt("token", "create", "cli-agents", "--scope", "agent", cwd=project)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("dirt_") and "agent.py URL --token TOKEN" in made.stderr
    usage = run_dirt("agent", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: dirt agent")
    [task_id] = submit(service, {})
    ran = run_dirt(
        "agent", master.url, "--token", token, "--once", "--name", "cli-box", cwd=Path("/")
    )
    assert ran.returncode == 0, ran.stderr
    assert service.task(task_id).node == "cli-box"
    listed = run_dirt("nodes", "list", cwd=project)
    line = next(row for row in listed.stdout.splitlines() if "cli-box" in row)
    assert "agent" in line
