"""A batch job's agent (`agent.py --once`, run by the job script of dirt.batch.jobscript)
talks to the pull-agent routes of dirt.web.agent_api with its batch job's one-use token
(``dirtbatch_...``) instead of an agent token: its registration only names the compute host,
and its one request for work starts exactly the attempt the token names (dirt.service.batch).
Everything after that is the pull agent's protocol, under the agent job's own token."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from dirt import remote
from dirt.batch.jobs import JOB_TOKEN_PREFIX
from dirt.documents import agents as agent_documents
from dirt.web.common import read_json, service_of


def is_batch_token(token: str | None) -> bool:
    return bool(token) and str(token).startswith(JOB_TOKEN_PREFIX)


async def register(request: Request, token: str) -> dict[str, Any]:
    """What `POST /api/agent/register` answers a batch job's agent: its node is the batch
    node; it runs one task, so one slot."""
    from dirt.web.agent_api import HOLD, heartbeat_every

    registration = agent_documents.registration(await read_json(request))
    service = service_of(request)
    _job, node = await run_in_threadpool(service.batch_register, token, registration.sys_info)
    settings = service.settings
    lease = settings.agents.lease
    return {
        "node": node.address,
        "slots": 1,
        "enabled": True,
        "lease": lease,
        "heartbeat": heartbeat_every(lease),
        "hold": heartbeat_every(lease),  # as for any agent: see agent_api.register
        "wait": HOLD,
        "config": {
            "isolation": "process",
            "output_limit": settings.dispatch.output_limit,
            "attachment_limit": settings.dispatch.attachment_limit,
        },
        "forkserver_source": remote.source("forkserver"),
    }


async def request_job(request: Request, token: str) -> Response:
    """The job's one task, started now (201); 409 when its attempt is over or started."""
    from dirt.web.agent_api import _json, _offer

    await read_json(request)
    service = service_of(request)
    offer = await run_in_threadpool(service.claim_batch_job, token)
    return _json(_offer(offer, service), 201)
