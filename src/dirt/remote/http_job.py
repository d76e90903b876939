"""A job the master handed the pull-mode agent: its identity on the wire (path, job token).

Stdlib only; a part of the served agent (see ``dirt.remote.source``), after http_client.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

JOB_TOKEN_HEADER = "Job-Token"
# What a job dropped from the queue before it started reports (cancelled, or refused).
NEVER_STARTED = (None, "killed before it started", None, None, False, True, 0.0, b"")


class Job:
    """One job the master handed this agent, while it runs and until it is reported."""

    __slots__ = (
        "attempt",
        "cancelled",
        "done",
        "ended",
        "id",
        "output_end",
        "over",
        "started",
        "taken",
        "task_id",
        "token",
        "uploaded",
        "watcher",
    )

    def __init__(self, offer: dict[str, Any]) -> None:
        self.id: int = offer["id"]
        self.task_id: str = offer["task_id"]
        self.attempt: int = offer["attempt"]
        self.token: str = offer["token"]
        self.output_end = 0  # where the next output chunk starts
        self.uploaded: dict[int, int] = {}  # attachment index -> bytes sent
        self.cancelled = False
        self.over = False  # the master refused it (lost, revoked): nothing more is sent
        self.done = False  # its process ended: no more heartbeats (its result is on its way)
        self.started = False  # given to the runner (until then, queued for a free slot)
        self.taken = time.monotonic()
        self.watcher: int | None = None  # the thread sending its heartbeats, once it has one
        self.ended = threading.Event()  # done or over: its heartbeats stop (http_heartbeats.py)

    @property
    def key(self) -> str:
        """How the runner names it: the job, not the task (a task lost here may come back)."""
        return str(self.id)

    @property
    def headers(self) -> dict[str, str]:
        return {JOB_TOKEN_HEADER: self.token}

    @property
    def path(self) -> str:
        return f"/api/agent/jobs/{self.id}"

    def end(self) -> None:
        """No heartbeat is due any more (its result is on its way, or the master refused it)."""
        self.ended.set()
