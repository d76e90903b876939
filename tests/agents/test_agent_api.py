"""The agent API over HTTP, request by request (FastAPI's test client on the real app and
store): tokens, job tokens, what is refused and what is stored."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dirt.documents.agents import Registration
from dirt.models import NodeKind, Outcome, TaskState, TokenScope
from dirt.service import Service
from dirt.web.agent_api import LeaseSweeper
from dirt.web.app import create_app
from tests.agents.conftest import LEASE, SLEEPY
from tests.conftest import wait_for
from tests.web.conftest import make_client

SYS_INFO = {"platform": "linux", "cpu_count": 2, "environ": {"HOME": "/root"}}
FINISHED: dict[str, Any] = {
    "state": "finished",
    "outcome": {
        "results": {"success": True, "answer": 42},
        "error": None,
        "exit_code": 0,
        "signal": None,
        "timed_out": False,
        "killed": False,
        "duration": 0.01,
    },
}


@pytest.fixture
def client(service: Service, add_task_module) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """A client from another machine: the agent API takes tokens, never loopback trust."""
    add_task_module("agent.sleepy", SLEEPY)
    with make_client(create_app(service, bind_host="0.0.0.0"), host="203.0.113.9") as c:
        yield c


@pytest.fixture
def token(service: Service) -> str:
    return service.create_token("agents", TokenScope.AGENT)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(client: TestClient, token: str, name: str = "lab", slots: int = 2) -> Any:
    body = {"name": name, "slots": slots, "sys_info": SYS_INFO, "protocol": 1}
    answer = client.post("/api/agent/register", json=body, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return answer.json()


def take(client: TestClient, token: str, name: str = "lab", prefetch: int = 0) -> Any:
    answer = ask(client, token, name, prefetch)
    assert answer.status_code == 201, answer.text
    return answer.json()


def ask(client: TestClient, token: str, name: str = "lab", prefetch: int = 0) -> Any:
    body = {"node": name, "wait": 0, "prefetch": prefetch}
    return client.post("/api/agent/jobs/request", json=body, headers=bearer(token))


def job_headers(job: dict[str, Any]) -> dict[str, str]:
    return {"Job-Token": job["token"]}


def test_a_job_is_claimed_run_and_stored(client: TestClient, token: str, service: Service) -> None:
    settings = register(client, token)
    assert settings["lease"] == LEASE and settings["config"]["isolation"] == "process"
    assert "class ForkServer" in settings["forkserver_source"]
    assert (
        client.post(
            "/api/agent/jobs/request", json={"node": "lab", "wait": 0}, headers=bearer(token)
        ).status_code
        == 204
    )
    [task_id] = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"]).tasks]
    job = take(client, token)
    assert job["task_id"] == task_id and job["attempt"] == 1 and job["name"] == "agent.sleepy"
    assert job["path"] == "tasks/agent/sleepy.py"
    running = service.task(task_id)
    assert running.state is TaskState.RUNNING and running.node == "lab"
    chunk = b"some output\n"
    headers = {**job_headers(job), "Content-Range": f"bytes 0-{len(chunk) - 1}/*"}
    for _ in range(2):  # sent again after a lost answer: stored once
        answer = client.patch(f"/api/agent/jobs/{job['id']}/output", content=chunk, headers=headers)
        assert answer.status_code == 202, answer.text
    beat = client.put(
        f"/api/agent/jobs/{job['id']}", json={"state": "running"}, headers=job_headers(job)
    )
    assert beat.json() == {"ok": True, "cancel": False}
    for _ in range(2):  # the result sent again after a lost answer changes nothing
        done = client.put(f"/api/agent/jobs/{job['id']}", json=FINISHED, headers=job_headers(job))
        assert done.status_code == 200 and done.json()["state"] == "succeeded", done.text
    task = service.task(task_id)
    assert task.state is TaskState.SUCCEEDED and task.attempts == 1
    assert task.results == {"success": True, "answer": 42}
    assert task.output == "some output\n"


def test_a_busy_agents_requests_answer_as_every_route_does(
    client: TestClient, token: str, service: Service
) -> None:
    """Results and requests for work skip FastAPI's routing (web.agent_lane), not its rules:
    the same headers, the same errors from the same handlers."""
    register(client, token)
    service.submit_tasks("r1", ["agent.sleepy"])
    job = take(client, token)
    path = f"/api/agent/jobs/{job['id']}"
    forged = client.put(path, json=FINISHED, headers={"Job-Token": "dirtjob_" + "x" * 43})
    assert forged.status_code == 401 and "forged" in forged.json()["error"]
    gone = client.post(REQUEST, json={"node": "nobody", "wait": 0}, headers=bearer(token))
    assert gone.status_code == 404 and "no agent node" in gone.json()["error"]
    done = client.put(path, json=FINISHED, headers=job_headers(job))
    assert done.status_code == 200 and done.json() == {"ok": True, "state": "succeeded"}
    for answer in (forged, gone, done):
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
    # A job id that is no number is the route's to refuse, as before.
    odd = client.put("/api/agent/jobs/1x", json=FINISHED, headers=job_headers(job))
    assert odd.status_code == 422 and odd.json()["problems"]


def test_a_result_can_bring_the_next_job(client: TestClient, token: str, service: Service) -> None:
    register(client, token)
    ids = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"] * 2).tasks]
    first = take(client, token)
    done = client.put(
        f"/api/agent/jobs/{first['id']}",
        json={**FINISHED, "next": True},
        headers=job_headers(first),
    ).json()
    second = done["next"]
    assert {first["task_id"], second["task_id"]} == set(ids)
    last = client.put(
        f"/api/agent/jobs/{second['id']}",
        json={**FINISHED, "next": True},
        headers=job_headers(second),
    )
    assert last.json()["next"] is None


def test_a_late_result_of_a_lost_job_is_refused(
    client: TestClient, token: str, service: Service
) -> None:
    register(client, token)
    [task_id] = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"]).tasks]
    job = take(client, token)
    sweep = service.expire_agent_leases(now=time.time() + LEASE + 1)
    assert sweep.lost == [task_id]
    assert service.task(task_id).state is TaskState.WAITING
    again = take(client, token)
    assert again["task_id"] == task_id and again["attempt"] == 2
    late = client.put(f"/api/agent/jobs/{job['id']}", json=FINISHED, headers=job_headers(job))
    assert late.status_code == 409
    assert "lease ran out" in late.json()["error"]
    beat = client.put(
        f"/api/agent/jobs/{job['id']}", json={"state": "running"}, headers=job_headers(job)
    )
    assert beat.status_code == 409
    assert service.task(task_id).state is TaskState.RUNNING  # the new attempt, untouched


def test_forged_and_expired_job_tokens_are_refused(
    client: TestClient, token: str, service: Service
) -> None:
    register(client, token)
    service.submit_tasks("r1", ["agent.sleepy"] * 2)
    job = take(client, token)
    other = take(client, token)
    path = f"/api/agent/jobs/{job['id']}"
    for headers in ({}, {"Job-Token": "dirtjob_forged"}, job_headers(other)):
        answer = client.put(path, json=FINISHED, headers=headers)
        assert answer.status_code == 401, answer.text
    assert client.put(path, json=FINISHED, headers=job_headers(job)).status_code == 200
    # A day after its job ended, a job token is forgotten: unknown, not merely late.
    service.expire_agent_leases(now=time.time() + 2 * 86400)
    expired = client.put(path, json=FINISHED, headers=job_headers(job))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]


def registration(**changes: Any) -> dict[str, Any]:
    return {"name": "lab", "slots": 2, "sys_info": SYS_INFO, "protocol": 1, **changes}


REGISTER, REQUEST = "/api/agent/register", "/api/agent/jobs/request"
MALFORMED: list[tuple[str, Any, int]] = [
    (REGISTER, registration(name="x y"), 400),
    (REGISTER, registration(slots=0), 400),
    (REGISTER, registration(sys_info=[]), 400),
    (REGISTER, registration(protocol=9), 400),
    (REGISTER, registration(name="local"), 400),
    (REGISTER, "not an object", 400),
    (REQUEST, {"node": "lab", "wait": 999}, 400),
    (REQUEST, {"node": "lab", "wait": 0, "extra": 1}, 400),
    (REQUEST, {"node": "lab", "wait": 0, "prefetch": -1}, 400),
    (REQUEST, {"node": "lab", "wait": 0, "prefetch": 5}, 400),
    (REQUEST, {"node": "lab", "wait": 0, "prefetch": 1.5}, 400),
    (REQUEST, {"node": "nobody", "wait": 0}, 404),
]


@pytest.mark.parametrize(("path", "body", "status"), MALFORMED)
def test_malformed_agent_requests_are_refused_and_store_nothing(
    client: TestClient, token: str, service: Service, path: str, body: Any, status: int
) -> None:
    before = service.current_seq()
    answer = client.post(path, json=body, headers=bearer(token))
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]
    assert service.current_seq() == before  # nothing written
    assert service.nodes() == []


def test_malformed_job_reports_are_refused_and_change_nothing(
    client: TestClient, token: str, service: Service
) -> None:
    register(client, token)
    [task_id] = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"]).tasks]
    job = take(client, token)
    path = f"/api/agent/jobs/{job['id']}"
    bad_outcome = {**FINISHED["outcome"], "duration": "long"}
    reports = [
        {"state": "done"},
        {"state": "finished"},
        {"state": "finished", "outcome": bad_outcome},
        {"state": "finished", "outcome": {**FINISHED["outcome"], "surprise": 1}},
        {"state": "running", "outcome": FINISHED["outcome"]},
        {"state": "running", "next": True},
        {"state": "running", "queued": 1},
        {**FINISHED, "queued": True},
        {**FINISHED, "prefetch": 1},
        {**FINISHED, "next": True, "prefetch": 9},
        {"state": "running", "hold": -1},
        {"state": "running", "hold": "5"},
        {"state": "running", "hold": 61},
        {**FINISHED, "hold": 1},
    ]
    before = service.current_seq()
    for report in reports:
        answer = client.put(path, json=report, headers=job_headers(job))
        assert answer.status_code == 400, (report, answer.text)
    assert (
        client.put(
            path, content=b"{", headers={**job_headers(job), "Content-Type": "application/json"}
        ).status_code
        == 400
    )
    assert (
        client.put(
            path, content=b"x", headers={**job_headers(job), "Content-Type": "text/plain"}
        ).status_code
        == 415
    )
    chunk = {**job_headers(job)}
    ranges = ["", "bytes 0-9/*", "bytes=0-2/*", "bytes 5-2/*", "0-2"]
    for value in ranges:
        sent = client.patch(
            f"{path}/output", content=b"abc", headers={**chunk, "Content-Range": value}
        )
        assert sent.status_code == 400, (value, sent.text)
    gap = client.patch(
        f"{path}/attachments/0", content=b"abc", headers={**chunk, "Content-Range": "bytes 10-12/*"}
    )
    assert gap.status_code == 400 and "send from byte 0" in gap.json()["error"]
    assert service.current_seq() == before
    assert service.task(task_id).state is TaskState.RUNNING


def test_agent_tokens_reach_the_agent_api_only(
    client: TestClient, token: str, service: Service
) -> None:
    api = service.create_token("admin", TokenScope.API)
    reader = service.create_token("viewer", TokenScope.READ)
    assert client.get("/api/records", headers=bearer(token)).status_code == 401
    record = {"record": {"_id": "r9"}, "tasks": [{"name": "agent.sleepy"}]}
    assert client.post("/api/records", json=record, headers=bearer(token)).status_code == 401
    assert client.get("/api/nodes", headers=bearer(token)).status_code == 401
    for other in (api, reader, "not-a-token"):
        body = {"name": "lab", "slots": 1, "sys_info": SYS_INFO, "protocol": 1}
        answer = client.post("/api/agent/register", json=body, headers=bearer(other))
        assert answer.status_code == 401
    assert client.get("/api/records", headers=bearer(reader)).status_code == 200
    register(client, token)
    assert [e.actor for e in service.audit()][-1:] == ["agents"]  # its registration, audited


def test_an_agent_may_not_take_the_name_of_an_ssh_node(
    client: TestClient, token: str, service: Service
) -> None:
    service.save_node("build1", {"cpu_count": 2, "platform": "linux"})
    body = {"name": "build1", "slots": 1, "sys_info": SYS_INFO, "protocol": 1}
    answer = client.post("/api/agent/register", json=body, headers=bearer(token))
    assert answer.status_code == 409 and "reached over SSH" in answer.json()["error"]
    assert service.node("build1").kind is NodeKind.SSH


def test_the_master_fails_a_task_its_agent_never_reports_past_its_timeout(
    client: TestClient, token: str, service: Service
) -> None:
    register(client, token)
    [task_id] = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"], timeout=0.2).tasks]
    claimed = time.time()
    job = take(client, token)
    time.sleep(0.3)  # the agent lives on past the timeout without enforcing it
    beat = {"state": "running"}
    client.put(f"/api/agent/jobs/{job['id']}", json=beat, headers=job_headers(job))
    # Its heartbeats keep the lease; past the timeout and a lease more the master gives up.
    sweep = service.expire_agent_leases(now=claimed + 0.2 + LEASE + 0.05)
    assert sweep.timed_out == [task_id]
    task, _, attempts = service.task_detail(task_id)
    assert task.state is TaskState.FAILED and "the master's backstop" in (task.reason or "")
    assert attempts[-1].outcome is Outcome.FAILED
    late = client.put(f"/api/agent/jobs/{job['id']}", json=FINISHED, headers=job_headers(job))
    assert late.status_code == 409


def test_agent_py_is_served_to_anyone(client: TestClient) -> None:
    answer = client.get("/agent.py")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/x-python")
    assert "def main(" in answer.text and "class ForkServerClient" in answer.text
    again = client.get("/agent.py", headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304


def test_the_nodes_page_says_an_agent_asks_for_work_and_no_master_drives_it(
    client: TestClient, token: str, service: Service
) -> None:
    register(client, token)
    reader = service.create_token("reader", TokenScope.READ)
    page = client.get("/nodes", headers={**bearer(reader), "X-Dirt-Fragment": "1"})
    assert page.status_code == 200, page.text
    row = page.text.split('data-node="lab"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="kind">agent</td>' in row
    assert "none: it asks for work" in row


def test_an_agent_with_busy_slots_gets_as_many_jobs_more_as_it_prefetches(
    client: TestClient, token: str, service: Service
) -> None:
    register(client, token, slots=2)
    service.submit_tasks("r1", ["agent.sleepy"] * 6)
    jobs = [take(client, token), take(client, token)]
    assert ask(client, token).status_code == 204  # its slots are full
    jobs.append(take(client, token, prefetch=1))  # one more, queued on the agent
    assert ask(client, token, prefetch=1).status_code == 204
    done = client.put(
        f"/api/agent/jobs/{jobs[0]['id']}",
        json={**FINISHED, "next": True, "prefetch": 1},
        headers=job_headers(jobs[0]),
    )
    assert done.status_code == 200, done.text
    assert done.json()["next"] is not None  # the result's answer refills the queue
    assert ask(client, token, prefetch=1).status_code == 204


def test_a_queued_jobs_heartbeat_moves_its_deadline(
    client: TestClient, token: str, service: Service
) -> None:
    """A job waiting on its agent for a slot has not begun its timeout: the master's backstop
    counts from its last heartbeat as queued."""
    register(client, token, slots=1)
    [task_id] = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"], timeout=0.5).tasks]
    job = take(client, token)
    path, headers = f"/api/agent/jobs/{job['id']}", job_headers(job)
    claimed = time.time()
    time.sleep(1.0)
    beat = client.put(path, json={"state": "running", "queued": True}, headers=headers)
    assert beat.status_code == 200, beat.text
    # Past the deadline it had when claimed (a lease and the timeout), within its new lease.
    sweep = service.expire_agent_leases(now=claimed + LEASE + 0.75)
    assert task_id not in sweep.timed_out and task_id not in sweep.lost
    assert service.task(task_id).state is TaskState.RUNNING
    assert service.expire_agent_leases(now=claimed + 1 + LEASE + 0.75).lost == [task_id]


def test_a_held_heartbeat_is_answered_as_soon_as_its_task_is_cancelled(
    client: TestClient, token: str, service: Service
) -> None:
    settings = register(client, token)
    assert settings["hold"] == settings["heartbeat"]  # this master holds heartbeats
    [task_id] = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"]).tasks]
    job = take(client, token)
    answers: list[tuple[float, Any]] = []

    def beat() -> None:
        sent = time.monotonic()
        answer = client.put(
            f"/api/agent/jobs/{job['id']}",
            json={"state": "running", "hold": 30},
            headers=job_headers(job),
        )
        answers.append((time.monotonic() - sent, answer.json()))

    held = threading.Thread(target=beat)
    held.start()
    time.sleep(0.2)
    assert not answers  # held: nothing to tell yet
    cancelled = time.monotonic()
    service.cancel_task(task_id)
    held.join(10)
    [(_, answer)] = answers
    assert answer == {"ok": True, "cancel": True}
    assert time.monotonic() - cancelled < 0.3  # at once, not at the end of the hold


def test_a_held_heartbeat_renews_the_lease_and_ends_within_a_heartbeat(
    client: TestClient, token: str, service: Service
) -> None:
    settings = register(client, token)
    [task_id] = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"]).tasks]
    job = take(client, token)
    claimed = time.time()
    time.sleep(0.5)
    sent = time.time()
    beat = client.put(
        f"/api/agent/jobs/{job['id']}",
        json={"state": "running", "hold": 30},
        headers=job_headers(job),
    )
    took = time.time() - sent
    assert beat.json() == {"ok": True, "cancel": False}
    # Held no longer than the master's `hold` (30 asked): the next one renews the lease in time.
    assert settings["hold"] * 0.9 <= took < settings["hold"] + 0.5
    # Renewed when it came, not when it was answered: the lease runs from then.
    assert service.expire_agent_leases(now=claimed + LEASE + 0.3).lost == []
    assert service.expire_agent_leases(now=sent + took + LEASE + 0.1).lost == [task_id]


def test_held_heartbeats_share_one_read_of_the_cancels_per_change(
    client: TestClient, token: str, service: Service
) -> None:
    register(client, token, slots=8)
    ids = [t.id for t in service.submit_tasks("r1", ["agent.sleepy"] * 8).tasks]
    jobs = [take(client, token) for _ in ids]
    reads: list[float] = []
    real = service.jobs_to_cancel

    def counted() -> frozenset[int]:
        reads.append(time.monotonic())
        return real()

    service.jobs_to_cancel = counted  # type: ignore[method-assign]
    answers: dict[str, Any] = {}

    def beat(job: dict[str, Any]) -> None:
        answer = client.put(
            f"/api/agent/jobs/{job['id']}",
            json={"state": "running", "hold": 30},
            headers=job_headers(job),
        )
        answers[job["task_id"]] = answer.json()["cancel"]

    held = [threading.Thread(target=beat, args=(job,)) for job in jobs]
    for thread in held:
        thread.start()
    for n in range(20):  # writes that change nothing of theirs
        service.create_token(f"busy{n}")
    service.cancel_task(jobs[3]["task_id"])
    for thread in held:
        thread.join(10)
    assert answers == {job["task_id"]: job is jobs[3] for job in jobs}
    # Each write wakes the one watcher, not eight heartbeats; reads come at most every 50 ms.
    assert len(reads) <= 2 + (reads[-1] - reads[0]) / 0.05
    assert len(reads) < 8 * 21


def test_a_lease_that_ran_out_while_no_master_listened_is_renewed_not_lost(
    service: Service, token: str
) -> None:
    service.register_agent(Registration("lab", 2, SYS_INFO))
    [task_id] = [t.id for t in service.submit_tasks("r1", ["examples.simple"]).tasks]
    offer = service.claim_job("lab", token)
    assert offer is not None
    time.sleep(LEASE + 0.1)  # the master is down: its lease runs out unheard
    sweeper = LeaseSweeper(service)  # the master is back
    sweeper.start()
    try:
        time.sleep(LEASE / 2)
        assert service.task(task_id).state is TaskState.RUNNING
        service.job_heartbeat(offer.job_id, offer.token)  # the agent's next heartbeat
        wait_for(lambda: service.task(task_id).state is TaskState.WAITING, 3 * LEASE,
                 what="the lease lost once the agent had a lease to renew it in")  # fmt: skip
    finally:
        sweeper.stop()
