"""What goes wrong around an agent, and what dirt makes of it: an agent killed or frozen
mid-task, a revoked token, a cancel, a timeout, a master restart, an agent told to stop."""

from __future__ import annotations

import signal
import time

from dirt.models import Outcome, TaskState
from dirt.service import Service
from tests.agents.conftest import LEASE, Master, StartAgent, submit
from tests.conftest import wait_finished, wait_for


def running_on(service: Service, task_id: str, node: str) -> bool:
    task = service.task(task_id)
    return task.state is TaskState.RUNNING and task.node == node


def test_a_task_of_an_agent_killed_mid_task_finishes_on_another(
    service: Service, start_agent: StartAgent
) -> None:
    doomed = start_agent("doomed")
    [task_id] = submit(service, {"seconds": 1.5})
    wait_for(lambda: running_on(service, task_id, "doomed"), what="the task on doomed")
    doomed.kill_all()  # kill -9: the agent, its fork server, the task
    start_agent("spare")
    [task] = wait_finished(service, [task_id], timeout=30)
    assert task.state is TaskState.SUCCEEDED and task.node == "spare"
    assert task.results == {"success": True, "agent": "spare"}
    _, _, attempts = service.task_detail(task_id)
    assert [(a.node, a.outcome) for a in attempts] == [
        ("doomed", Outcome.LOST),
        ("spare", Outcome.SUCCEEDED),
    ]
    assert "no heartbeat" in (attempts[0].reason or "")
    node = service.node("doomed")
    assert node.infra_failures == 1 and node.penalty == 1  # a flaky host gets fewer tasks
    wait_for(lambda: not service.node("doomed").online, timeout=10, what="doomed offline")


def test_the_late_result_of_a_lost_attempt_is_refused(
    service: Service, start_agent: StartAgent
) -> None:
    frozen = start_agent("frozen")
    [task_id] = submit(service, {"seconds": 1.0})
    wait_for(lambda: running_on(service, task_id, "frozen"), what="the task on frozen")
    frozen.signal(signal.SIGSTOP)  # its host hangs; the task process runs on and ends
    start_agent("spare")
    [task] = wait_finished(service, [task_id], timeout=30)
    assert task.node == "spare"
    frozen.signal(signal.SIGCONT)  # it wakes up and reports what its task did
    frozen.wait_log(r"job \d+: the master refused its report: .* is over")
    task = service.task(task_id)
    assert task.results == {"success": True, "agent": "spare"}  # stored once, by spare
    assert task.attempts == 2


def test_a_revoked_token_stops_its_agents(service: Service, start_agent: StartAgent) -> None:
    agent = start_agent("revoked")
    wait_for(lambda: service.node("revoked").online, what="polling")
    service.revoke_token("agents")
    assert agent.wait(timeout=10) == 1
    assert "the master refused this agent" in agent.log and "revoked" in agent.log


def test_a_cancel_reaches_the_agent_through_the_heartbeat(
    service: Service, start_agent: StartAgent
) -> None:
    agent = start_agent("canceller")
    [task_id] = submit(service, {"seconds": 30})
    wait_for(lambda: running_on(service, task_id, "canceller"), what="the task running")
    asked = time.monotonic()
    service.cancel_task(task_id)
    [task] = wait_finished(service, [task_id], timeout=10)
    assert task.state is TaskState.CANCELLED
    assert time.monotonic() - asked < LEASE + 2
    agent.wait_log("cancelled; killing it")


def test_the_agent_enforces_a_tasks_timeout(service: Service, start_agent: StartAgent) -> None:
    start_agent("timer")
    [task_id] = submit(service, {"seconds": 30}, timeout=0.5)
    [task] = wait_finished(service, [task_id], timeout=10)
    assert task.state is TaskState.FAILED
    assert task.reason == "timed out after 0.5 s"


def test_agents_come_back_after_a_master_restart(
    service: Service, master: Master, start_agent: StartAgent
) -> None:
    agent = start_agent("patient", 3)
    [ends, runs_on] = submit(service, {"seconds": 1.0}, {"seconds": 3 * LEASE})
    both = [ends, runs_on]
    wait_for(lambda: all(running_on(service, t, "patient") for t in both), what="both running")
    master.stop()
    agent.wait_log("master unreachable", timeout=10)
    # Down for longer than a lease: `ends` ends meanwhile (its result waits for the master),
    # `runs_on` runs on; both leases ran out while no master could hear a heartbeat.
    time.sleep(2 * LEASE)
    master.start()
    after = submit(service, {}, {})
    done = wait_finished(service, [ends, runs_on, *after], timeout=40)
    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 4
    assert [t.attempts for t in done[:2]] == [1, 1]  # kept across the restart, not lost
    assert "master reachable again" in agent.log


def test_an_agent_told_to_stop_gives_its_tasks_back(
    service: Service, start_agent: StartAgent
) -> None:
    agent = start_agent("leaving")
    [task_id] = submit(service, {"seconds": 30})
    agent.wait_log(f"task {task_id} \\(agent.sleepy\\)")  # running there, not just claimed
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=10) == 0
    task, _, attempts = service.task_detail(task_id)
    assert task.state is TaskState.WAITING, agent.log  # at once, not after a lease
    assert attempts[-1].outcome is Outcome.LOST
    assert attempts[-1].reason == "agent leaving stopped while it ran: the agent was stopped"


def test_a_busy_agent_stays_online(service: Service, start_agent: StartAgent) -> None:
    start_agent("busy")
    [task_id] = submit(service, {"seconds": 2 * LEASE})
    wait_for(lambda: running_on(service, task_id, "busy"), what="the task running")
    deadline = time.monotonic() + 1.5 * LEASE
    while time.monotonic() < deadline:  # it does not poll: its heartbeats show it alive
        assert service.node("busy").online
        time.sleep(0.1)
    assert wait_finished(service, [task_id])[0].state is TaskState.SUCCEEDED
