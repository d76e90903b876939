"""Pull-mode agents over HTTP: the agent file, its registration, work handed out by long-poll,
and what it reports about its jobs (GitLab runners' shape).

    GET   /agent.py                              the agent: one stdlib-only file
    POST  /api/agent/register                    agent token; the node, its settings
    POST  /api/agent/jobs/request                agent token; held up to `wait` s: 201 a job,
                                                 204 none
    PUT   /api/agent/jobs/{id}                   Job-Token; heartbeat (held up to `hold` s,
                                                 answered at once on a cancel), result or
                                                 give back
    PATCH /api/agent/jobs/{id}/output            Job-Token; output chunk at Content-Range
    PATCH /api/agent/jobs/{id}/attachments/{i}   Job-Token; attachment chunk at Content-Range

An agent token (`dirt token create NAME --scope agent`) reaches these routes and nothing else;
no other token reaches them. A job's token is good for that one attempt of its task. Each web
process also sweeps the leases (`LeaseSweeper`): every step the store takes is conditional, so
any number of processes may sweep at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from dirt import remote
from dirt.db.tokens import TokenInfo
from dirt.documents import agents as agent_documents
from dirt.errors import InputError
from dirt.service import JobOffer, Service
from dirt.web import batch_api
from dirt.web.auth import access
from dirt.web.common import JSON, dumps, read_body, read_json, service_of
from dirt.web.hub import ChangeHub

log = logging.getLogger("dirt.web")

router = APIRouter(tags=["agents"])

HOLD = 30.0  # the longest a request for work is held, in seconds
CANCEL_GAP = 0.05  # seconds between two reads of the cancelled jobs (see `Cancels`)
AGENT_FILE = "http_agent"  # the shipped program served as agent.py
JOB_TOKEN = "Job-Token"

AGENT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request: every problem is named; nothing was stored"},
    401: {"description": "No valid agent token (or job token): unknown, revoked or expired"},
    404: {"description": "No such agent node: the agent registers (again)"},
    409: {"description": "The job is over (its lease ran out, it timed out): report refused"},
    413: {"description": "Body over web.max_body_bytes"},
    415: {"description": "Body is not JSON"},
}


def _agent_source() -> bytes:
    return remote.source(AGENT_FILE).encode("utf-8")


@router.get(
    "/agent.py",
    summary="The pull-mode agent: `python3 agent.py URL --token TOKEN` (stdlib only)",
    response_class=Response,
)
def agent_file(request: Request) -> Response:
    """Served to anyone: it is dirt's own code and holds no secret."""
    body = _agent_source()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(
        body,
        media_type="text/x-python; charset=utf-8",
        headers={"ETag": etag, "Content-Disposition": 'inline; filename="agent.py"'},
    )


async def _agent(request: Request) -> tuple[TokenInfo, str]:
    """The request's agent token (its info and the token itself), or 401."""
    checker = access(request)
    found = await run_in_threadpool(checker.agent_identity, request)
    if found is None:
        raise HTTPException(
            401,
            "an agent token is needed: make one with `dirt token create NAME --scope agent` "
            "and give it to the agent (--token); it may have been revoked",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = checker.bearer(request)
    assert token is not None
    return found, token


def _json(value: Any, status: int = 200) -> Response:
    """A JSON answer made here (FastAPI's encoder walks every value again)."""
    return Response(dumps(value), status_code=status, media_type=JSON)


def _job_token(request: Request) -> str:
    try:
        return agent_documents.job_token(request.headers.get(JOB_TOKEN))
    except InputError as exc:
        raise HTTPException(401, str(exc)) from None


@router.post(
    "/api/agent/register", summary="Register (or refresh) an agent node", responses=AGENT_ERRORS
)
async def register(request: Request) -> dict[str, Any]:
    """Body: `{"name", "slots", "sys_info", "protocol"}`. Answers with the node and what the
    agent needs to run tasks: the lease, how often to send heartbeats, the fork server."""
    bearer = access(request).bearer(request)
    if batch_api.is_batch_token(bearer):
        return await batch_api.register(request, str(bearer))
    await _agent(request)
    registration = agent_documents.registration(await read_json(request))
    service = service_of(request)
    node = await run_in_threadpool(service.register_agent, registration)
    settings = service.settings
    lease = settings.agents.lease
    return {
        "node": node.address,
        "slots": node.slots,
        "enabled": node.enabled,
        "lease": lease,
        "heartbeat": heartbeat_every(lease),
        # This master holds a heartbeat (`"hold": S`) up to this long, answering it at once
        # on a cancel: an agent keeps one open per running job and hears a cancel in
        # milliseconds, not at its next heartbeat.
        "hold": heartbeat_every(lease),
        "wait": HOLD,
        "config": {
            "isolation": "process",
            "output_limit": settings.dispatch.output_limit,
            "attachment_limit": settings.dispatch.attachment_limit,
        },
        "forkserver_source": remote.source("forkserver"),
    }


def heartbeat_every(lease: float) -> float:
    """How often an agent renews a job's lease (and the longest a heartbeat is held): three
    times a lease, at least every 5 s."""
    return round(min(5.0, lease / 3), 3)


def _offer(offer: JobOffer, service: Service) -> dict[str, Any]:
    task = offer.task
    path = offer.module.path
    lease = service.lease
    with contextlib.suppress(ValueError):
        path = path.relative_to(service.settings.project_dir)
    return {
        "id": offer.job_id,
        "task_id": task.id,
        "attempt": offer.attempt,
        "name": task.name,
        "path": str(path),
        "sha256": offer.module.sha256,
        "source": base64.b64encode(offer.module.source).decode("ascii"),
        "kwargs": task.kwargs or {},
        "timeout": offer.timeout,
        "token": offer.token,
        "lease": lease,
        "heartbeat": heartbeat_every(lease),
    }


@router.post(
    "/api/agent/jobs/request",
    summary="Take the next task this agent can run (long-poll: 201 a job, 204 none)",
    status_code=201,
    responses={**AGENT_ERRORS, 204: {"description": "No work within `wait` seconds"}},
)
async def request_job(request: Request) -> Response:
    """Body: `{"node": NAME, "wait": SECONDS, "prefetch": N}` (wait at most 60, held at most
    30; prefetch, default 0: the jobs the agent queues beyond its slots, so it gets a job while
    its slots are busy until it holds slots + N). The job: `id`,
    `task_id`, `attempt`, `name`, `sha256`, `source` (the module's bytes, base64), `kwargs`,
    `timeout`, `token` (the job token: send it as `Job-Token`), `lease`, `heartbeat`."""
    bearer = access(request).bearer(request)
    if batch_api.is_batch_token(bearer):
        return await batch_api.request_job(request, str(bearer))
    _, agent_token = await _agent(request)
    wanted = agent_documents.work_request(await read_json(request))
    service = service_of(request)
    hub: ChangeHub = request.app.state.hub
    claimable: Claimable = request.app.state.claimable
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wanted.wait, HOLD)
    # While it waits the agent must still show online: a claim (which notes the poll) at least
    # every quarter lease, whatever happens meanwhile.
    every = service.lease / 4
    tried = -every
    with hub.eagerly():
        while True:
            seq = hub.seq
            if await request.is_disconnected():
                return Response(status_code=204)
            if loop.time() - tried >= every or await claimable(seq):
                tried = loop.time()
                offer = await run_in_threadpool(
                    service.claim_job, wanted.node, agent_token, None, wanted.prefetch
                )
                if offer is not None:
                    return _json(_offer(offer, service), 201)
            remaining = deadline - loop.time()
            if remaining <= 0 or hub.stopped:
                return Response(status_code=204)
            await hub.wait_beyond(seq, min(remaining, every))


class Cancels:
    """Held heartbeats waiting to hear of a cancel, by job. While any waits, one watcher reads
    the open jobs whose task someone asked to cancel once per change of the store (at most
    every CANCEL_GAP seconds) and answers theirs: a thousand held heartbeats cost one waiter
    of the hub and one read per change, not a thousand."""

    def __init__(self, service: Service, hub: ChangeHub) -> None:
        self.service = service
        self.hub = hub
        self.jobs: frozenset[int] = frozenset()  # as of the last read
        self.waiting: dict[int, set[asyncio.Event]] = {}
        self.watcher: asyncio.Task[None] | None = None

    async def wait(self, job_id: int, timeout: float) -> bool:
        """True as soon as `job_id`'s task is to be cancelled (one that was when the last
        read was made counts); False after `timeout` seconds."""
        event = asyncio.Event()
        self.waiting.setdefault(job_id, set()).add(event)
        try:
            if self.watcher is None or self.watcher.done():
                self.watcher = asyncio.create_task(self._watch())
            elif job_id in self.jobs:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            return event.is_set()
        finally:
            events = self.waiting.get(job_id, set())
            events.discard(event)
            if not events:
                self.waiting.pop(job_id, None)

    async def _watch(self) -> None:
        while self.waiting and not self.hub.stopped:
            seq = self.hub.seq
            try:
                self.jobs = await run_in_threadpool(self.service.jobs_to_cancel)
            except Exception as exc:  # the store may be busy or gone for a moment
                log.warning("reading cancelled agent jobs failed: %s", exc)
            for job_id in self.jobs & self.waiting.keys():
                for event in self.waiting[job_id]:
                    event.set()
            # A busy agent writes once per task: changes come faster than cancels need hearing.
            await asyncio.sleep(CANCEL_GAP)
            await self.hub.wait_beyond(seq, HOLD)


async def _cancel_heard(request: Request, job_id: int, hold: float) -> bool:
    """Hold a heartbeat's answer for up to `hold` seconds: True as soon as someone asks to
    cancel the job's task."""
    cancels: Cancels = request.app.state.cancels
    return await cancels.wait(job_id, hold)


class Claimable:
    """Whether any task waits that no one holds: asked once per change of the store, however
    many agents wait in this process (a write wakes them all; without work for them, they
    go back to waiting on one shared read instead of a claim each)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.seq = -1
        self.found = True
        self.lock = asyncio.Lock()

    async def __call__(self, seq: int) -> bool:
        if seq != self.seq:
            async with self.lock:
                if seq != self.seq:
                    self.found = await run_in_threadpool(self.service.any_claimable)
                    self.seq = seq
        return self.found


@router.put(
    "/api/agent/jobs/{job_id}",
    summary="A job's heartbeat or result",
    response_class=Response,
    responses=AGENT_ERRORS,
)
async def report(request: Request, job_id: int) -> Response:
    """Body: `{"state": "running"}` (a heartbeat: answered with `cancel`, true when the agent
    must kill the task; `"queued": true` while the job waits on the agent for a slot: its
    deadline moves too; `"hold": S`: the lease is renewed at once and the answer held up to S
    seconds, at most the `hold` of the registration's answer, and sent as soon as someone
    cancels the task), `{"state": "finished", "outcome": {...}}` (answered with the task's
    state; with `"next": true`, also with `next`: the agent's next job, or null; `"prefetch":
    N` as in a request for work), or
    `{"state": "abandoned", "reason": "..."}` (the agent stops: the task waits again). 409
    when the job is over: its lease ran out or it timed out on the master."""
    token = _job_token(request)
    job_report = agent_documents.job_report(await read_json(request))
    service = service_of(request)
    if job_report.state == "running":
        cancel = await run_in_threadpool(service.job_heartbeat, job_id, token, job_report.queued)
        if not cancel and job_report.hold:
            hold = min(job_report.hold, heartbeat_every(service.lease))
            cancel = await _cancel_heard(request, job_id, hold)
        return _json({"ok": True, "cancel": cancel})
    if job_report.state == "abandoned":
        await run_in_threadpool(service.abandon_job, job_id, token, job_report.reason)
        return _json({"ok": True})
    outcome = job_report.outcome
    assert outcome is not None
    state, offer = await run_in_threadpool(
        lambda: service.finish_job(
            job_id, token, outcome, then_claim=job_report.next, prefetch=job_report.prefetch
        )
    )
    answer: dict[str, Any] = {"ok": True, "state": state.value}
    if job_report.next:
        answer["next"] = _offer(offer, service) if offer is not None else None
    return _json(answer)


@router.patch(
    "/api/agent/jobs/{job_id}/output",
    summary="A chunk of a job's output (Content-Range: bytes START-END/*)",
    status_code=202,
    response_class=Response,
    responses=AGENT_ERRORS,
)
async def output(request: Request, job_id: int) -> Response:
    token = _job_token(request)
    data = await read_body(request)
    start = agent_documents.content_range(request.headers.get("content-range"), len(data))
    await run_in_threadpool(service_of(request).job_output, job_id, token, start, data)
    return _json({"ok": True, "end": start + len(data)}, 202)


@router.patch(
    "/api/agent/jobs/{job_id}/attachments/{index}",
    summary="A chunk of attachment `index` of a job's results (Content-Range: bytes START-END/*)",
    status_code=202,
    response_class=Response,
    responses=AGENT_ERRORS,
)
async def attachment(request: Request, job_id: int, index: int) -> Response:
    token = _job_token(request)
    data = await read_body(request)
    start = agent_documents.content_range(request.headers.get("content-range"), len(data))
    held = await run_in_threadpool(
        service_of(request).job_upload, job_id, token, index, start, data
    )
    return _json({"ok": True, "end": held}, 202)


class LeaseSweeper:
    """Gives up on agents' jobs whose lease ran out, in one web process (see the module's
    docstring): every quarter lease, at most every second, from a whole lease after it starts.
    A lease runs out only while agents could renew it: leases that ran out while no master
    listened (a restart) are renewed by the agents' next heartbeats, not lost at once."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.grace = service.settings.agents.lease
        self.interval = min(1.0, self.grace / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dirt-agent-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        if self._stop.wait(self.grace):
            return
        while True:
            try:
                self.service.expire_agent_leases()
            except Exception as exc:  # the store may be busy or gone for a moment
                log.warning("agent lease sweep failed: %s", exc)
            if self._stop.wait(self.interval):
                return
