"""The pull-mode agent's heartbeats. Stdlib only: a part of the served agent (see
``dirt.remote.source``), after http_job.py.

A job held for FIRST_BEAT seconds gets a heartbeat thread of its own (a quicker one ends before
it needs one: a busy agent's trivial tasks cost no request more). Its heartbeats go one after
the other, each held by the master for up to the registration's ``hold`` seconds and answered
at once when someone cancels the task: a cancel reaches the agent in tens of milliseconds, not
at the next heartbeat, for the price of one open connection per running job. Each heartbeat
renews the job's lease, so one goes at least every ``hold`` seconds. A master that holds none
(``hold`` 0 or absent) gets a heartbeat every ``heartbeat`` seconds, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dirt.remote.http_client import Backoff, Master, Refused, Unreachable, log
from dirt.remote.http_job import Job

FIRST_BEAT = 0.25  # seconds a job is held before its heartbeats begin
TICK = 0.05  # seconds between looks for jobs that are due a heartbeat thread
BEAT_GAP = 0.2  # the least time between two heartbeats of a job (were the master to answer fast)


class Heartbeats:
    """Each held job's heartbeats (see the module's docstring). `held` lists the jobs; `kill`
    kills a job's task (someone cancelled it); `refused` is told when the master refuses a
    heartbeat (the job is over: its lease ran out, or the agent's token was revoked)."""

    def __init__(
        self,
        master: Master,
        held: Callable[[], list[Job]],
        kill: Callable[[Job], None],
        refused: Callable[[Job, Refused], None],
    ) -> None:
        self.master = master
        self.held = held
        self.kill = kill
        self.refused = refused
        self.every = 5.0  # seconds between heartbeats the master does not hold
        self.hold = 0.0  # the longest the master holds one (0: it holds none)

    def configure(self, answer: dict[str, Any]) -> None:
        """Take the registration's answer: `heartbeat` and `hold`, in seconds."""
        self.every = float(answer.get("heartbeat", self.every))
        self.hold = min(float(answer.get("hold", 0) or 0), self.every)

    def start(self) -> None:
        threading.Thread(target=self._run, name="dirt-agent-heartbeats", daemon=True).start()

    def _run(self) -> None:
        stopping = self.master.stopping
        while not stopping.wait(TICK):
            due = time.monotonic() - FIRST_BEAT
            for job in self.held():
                if job.watcher is None and job.taken <= due and not job.ended.is_set():
                    job.watcher = -1  # taken care of
                    threading.Thread(
                        target=self._beat,
                        args=(job,),
                        name=f"dirt-agent-beat-{job.id}",
                        daemon=True,
                    ).start()

    def stop_beating(self, job: Job) -> None:
        """`job` ended: its held heartbeat is cut (it waits for nothing now)."""
        job.end()
        watcher = job.watcher
        if watcher is not None and watcher > 0:
            self.master.cut(watcher)

    def _beat(self, job: Job) -> None:
        """`job`'s heartbeats, until it ends."""
        job.watcher = threading.get_ident()
        stopping = self.master.stopping
        backoff = Backoff()
        try:
            while not (job.ended.is_set() or job.over or stopping.is_set()):
                began = time.monotonic()
                hold = 0.0 if job.cancelled else self.hold  # a cancelled one is answered at once
                beat: dict[str, Any] = {"state": "running"}
                if hold:
                    beat["hold"] = hold
                if not job.started:
                    beat["queued"] = True  # its timeout has not begun
                try:
                    _, answer = self.master.send(
                        "PUT", job.path, beat, job.headers, timeout=hold + 30
                    )
                except Unreachable:
                    if job.ended.is_set() or stopping.is_set():
                        return  # cut: its result is on its way, or the agent stops
                    # The lease outlasts a few misses; the next try comes within a heartbeat.
                    backoff.wait(stopping, most=self.every)
                    continue
                except Refused as exc:
                    if not job.ended.is_set():
                        self.refused(job, exc)
                    return
                backoff.reset()
                if isinstance(answer, dict) and answer.get("cancel") and not job.cancelled:
                    job.cancelled = True
                    log.info("job %d: task %s cancelled; killing it", job.id, job.task_id)
                    self.kill(job)
                gap = BEAT_GAP if hold else self.every
                job.ended.wait(max(0.0, gap - (time.monotonic() - began)))
        finally:
            self.master.forget()  # this thread's connection
