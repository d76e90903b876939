"""A cancel reaches a real agent at once, not at its next heartbeat: with a lease of 30 s the
heartbeat is every 5 s, and a cancelled task is killed well within one."""

from __future__ import annotations

import time
from typing import Any

import pytest

from dirt.models import TaskState
from dirt.service import Service
from tests.agents.conftest import StartAgent, submit
from tests.agents.test_agent_failures import running_on
from tests.conftest import wait_finished, wait_for

HEARTBEAT = 5.0  # a lease of 30 s: see dirt.web.agent_api.heartbeat_every
PROMPT = 1.5  # seconds from the cancel to the task stored as cancelled (it takes ~0.1 s)


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    return {"dispatch": {"poll_interval": 0.02}, "log": {"file": ""}, "agents": {"lease": 30}}


def test_a_cancel_kills_a_running_task_at_once(service: Service, start_agent: StartAgent) -> None:
    agent = start_agent("canceller")
    [task_id] = submit(service, {"seconds": 60})
    wait_for(lambda: running_on(service, task_id, "canceller"), what="the task running")
    time.sleep(1.0)  # its first heartbeat is held by the master: the cancel must cut in
    asked = time.monotonic()
    service.cancel_task(task_id)
    [task] = wait_finished(service, [task_id], timeout=HEARTBEAT)
    took = time.monotonic() - asked
    assert task.state is TaskState.CANCELLED
    assert took < PROMPT < HEARTBEAT, f"cancelled after {took:.2f} s"
    agent.wait_log("cancelled; killing it")


def test_a_cancel_reaches_a_job_queued_on_the_agent(
    service: Service, start_agent: StartAgent
) -> None:
    start_agent("queuer", 1)
    first, second = submit(service, {"seconds": 60}, {"seconds": 60})
    wait_for(lambda: running_on(service, first, "queuer"), what="the first task running")
    # The second is claimed too, queued on the agent for its one slot (prefetch).
    wait_for(lambda: running_on(service, second, "queuer"), what="the second task queued")
    time.sleep(0.5)
    asked = time.monotonic()
    service.cancel_task(second)
    [task] = wait_finished(service, [second], timeout=HEARTBEAT)
    assert task.state is TaskState.CANCELLED
    assert time.monotonic() - asked < PROMPT
    assert service.task(first).state is TaskState.RUNNING  # only the cancelled one ended
    service.cancel_task(first)
    wait_finished(service, [first], timeout=HEARTBEAT)
