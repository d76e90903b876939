"""A dispatcher next to a busy pull-mode agent on one SQLite store.

The agent's progress, a claim and a result per task written by the web process, is no news to
the dispatcher (it would survey the store again for every task the agent runs); what is news
still reaches it at once: a submission from another process, a node disabled or enabled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from dirt.dispatch import membership
from dirt.documents.agents import Registration
from dirt.models import TaskState, TokenScope
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_finished, wait_for

AGENT_ONLY = ["DIRT_AGENT_ONLY in environ"]  # tasks for the agent, never for the local node
SUCCESS = ({"success": True}, None, 0, None, False, False, 0.01, b"")


class BusyAgent:
    """An agent's web process (a Service of its own) claiming and finishing its tasks as fast
    as the store lets it, each result bringing the next job, until stopped."""

    def __init__(self, web: Service, token: str) -> None:
        self.web = web
        self.token = token
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-agent")

    def _run(self) -> None:
        offer = self.web.claim_job("agent", self.token)
        while offer is not None and not self._stop.is_set():
            _, offer = self.web.finish_job(offer.job_id, offer.token, SUCCESS, then_claim=True)
            self.done += 1

    def start(self) -> None:
        self._thread.start()
        wait_for(lambda: self.done >= 10, what="the agent to get busy")

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.done


@pytest.fixture
def busy_agent(service: Service, local_node: str) -> Iterator[BusyAgent]:
    web = Service(service.settings)
    token = web.create_token("agent", TokenScope.AGENT)
    web.register_agent(Registration("agent", 1, {"environ": {"DIRT_AGENT_ONLY": "1"}}))
    web.submit_tasks("agent-work", ["examples.simple"] * 5000, requires=AGENT_ONLY)
    agent = BusyAgent(web, token)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        web.close()


def submit_elsewhere(other: Service, record: str) -> str:
    """A task for the local node only (the agent tells no architecture)."""
    architecture = other.node("local").sys_info["architecture"]
    requires = [f"architecture is {architecture}"]
    [task] = other.submit_tasks(record, ["examples.simple"], requires=requires).tasks
    return task.id


def test_a_submission_elsewhere_starts_at_once_while_an_agent_is_busy(
    service: Service, busy_agent: BusyAgent, dispatcher: RunningDispatcher
) -> None:
    other = Service(service.settings)  # `dirt submit`
    try:
        wait_finished(service, [submit_elsewhere(other, "warm")])  # the node's connection up
        delays = []
        for i in range(5):
            time.sleep(0.1)
            submitted = time.time()
            [task] = wait_finished(service, [submit_elsewhere(other, f"r{i}")])
            assert task.node == "local"
            delays.append(task.started - submitted)
        # Missed, it would wait for the next news (none comes: the agent's progress is none);
        # the agent's thread shares this process (and its GIL) with the dispatcher's.
        assert sorted(delays)[2] < 0.5, delays
        done = busy_agent.done
        wait_for(lambda: busy_agent.done > done, what="the agent to be busy still")
    finally:
        other.close()


def test_a_node_changed_elsewhere_is_seen_at_once_while_an_agent_is_busy(
    service: Service,
    busy_agent: BusyAgent,
    dispatcher: RunningDispatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No beat of its own for 30 s: only news of nodes brings the dispatcher to look again.
    monkeypatch.setattr(membership, "BEAT_S", 30.0)
    other = Service(service.settings)  # `dirt nodes disable` / `enable`
    try:
        wait_finished(service, [submit_elsewhere(other, "warm")])

        def online() -> bool:
            """As the dispatcher announces: the node driven and connected."""
            return any(
                "local" in info.nodes and info.nodes["local"].online
                for info in service.dispatcher_announcements()
            )

        wait_for(online, timeout=10, what="the node announced")
        other.set_node_enabled("local", False)
        wait_for(lambda: not online(), timeout=10, what="the node disabled")
        task_id = submit_elsewhere(other, "while-disabled")
        time.sleep(0.3)
        assert service.task(task_id).state is TaskState.WAITING
        other.set_node_enabled("local", True)
        [task] = wait_finished(service, [task_id], timeout=10)
        assert task.node == "local"
    finally:
        other.close()
