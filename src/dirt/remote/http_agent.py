"""Pull-mode agent: a host the master cannot reach (behind a firewall or NAT, without sshd)
fetches its work from the master over HTTP and runs each task in a process of its own.

The master serves it as one stdlib-only file at ``GET /agent.py`` (``dirt.remote.source``
puts it together from the parts an SSH node runs, then sysinfo.py, http_client.py (its HTTP
client), this file and http_main.py (its command line)), run as::

    python3 agent.py URL --token TOKEN [--slots N] [--name NAME] [--once] [--ca FILE]

or as ``dirt agent URL ...`` from an installed dirt. It registers with its host's sys_info (the
probe SSH nodes get), then long-polls for jobs (``POST /api/agent/jobs/request``). A job runs in
the process runner an SSH node uses (a warm fork server: a process per task, killed by process
group), and its output, attachments and outcome go through the same fair, bounded `Sender`, here
to an `HttpChannel` that turns each message into a request: output chunks and attachment chunks
are PATCHed with their offsets, the outcome PUT. Heartbeats renew each job's lease and bring
cancels at once (http_heartbeats.py). Every request but the poll may be sent again safely; the
agent sends again, with backoff, until the master answers: a restart of the master loses
nothing but time. A report the master refuses (409: the job's lease ran out and its task moved
on) is dropped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import threading
from typing import Any

from dirt.remote.agent import Sender, start_runner
from dirt.remote.http_client import (
    AGENT_PROTOCOL,
    TOKEN_ENV,
    Backoff,
    Fatal,
    Master,
    Refused,
    Unreachable,
    log,
)
from dirt.remote.http_heartbeats import Heartbeats
from dirt.remote.http_job import NEVER_STARTED, Job
from dirt.remote.protocol import BLOB, CHUNK_SIZE, DONE, OUTPUT, RunRequest
from dirt.remote.sysinfo import collect

WAIT = 30.0  # seconds a request for work asks to be held
# Jobs held beyond the slots, queued for the next slot that frees: it starts at once, while the
# result of the last job (and the request that brings the next) is on its way.
PREFETCH = 1


class HttpChannel:
    """What the agent's `Sender` sends on: each message of a job becomes a request."""

    def __init__(self, agent: PullAgent) -> None:
        self.agent = agent

    def isclosed(self) -> bool:
        return False  # requests are retried until answered: the link never closes

    def send(self, message: tuple[Any, ...]) -> None:
        job = self.agent.job(message[1])
        if job is None:
            return
        kind = message[0]
        if kind == DONE:
            # Its output and attachments went before: the result may go on another thread,
            # so that the results of several jobs travel at once.
            self.agent.reports.put((job, message[2]))
        elif job.over:
            return
        elif kind == OUTPUT:
            self.agent.send_output(job, message[2], message[3])
        elif kind == BLOB:
            self.agent.send_blob(job, message[2], message[3])


class PullAgent:
    """Registers, polls for jobs, runs them, reports them."""

    def __init__(self, master: Master, name: str, slots: int, once: bool = False) -> None:
        self.master = master
        self.name = name
        self.slots = slots
        self.once = once
        self.stopping = master.stopping
        self.cond = threading.Condition()
        self.jobs: dict[str, Job] = {}  # held: running, queued, or being reported
        self.queued: list[tuple[Job, dict[str, Any]]] = []  # waiting for a free slot
        self.running = 0  # jobs whose process runs (at most `slots`)
        self.prefetch = 0 if once else PREFETCH
        self.taken = 0
        self.heartbeats = Heartbeats(master, self._held, self._kill, self._refused)
        self.wait = WAIT
        self.fatal: str | None = None
        self.runner: Any = None
        self.runner_ready = threading.Event()  # set once the runner started, or failed to
        self.starting: threading.Thread | None = None  # starts the runner (`--once`)
        self.runner_error = "cannot run tasks: the runner did not start"
        self.sender: Sender | None = None
        self.poller: int | None = None  # the thread that asks for work
        self.holding = False  # its request is one the master may hold (else, answered at once)
        self.polled = threading.Event()  # it asks no more
        # Results on their way: one reporting thread per slot sends them (see `_report_loop`).
        self.reports: queue.SimpleQueue[tuple[Job, tuple[Any, ...]]] = queue.SimpleQueue()

    # ---- the master's side of things -----------------------------------------------------

    def register(self) -> dict[str, Any]:
        info = collect()
        info.get("environ", {}).pop(TOKEN_ENV, None)
        body = {
            "name": self.name,
            "slots": self.slots,
            "sys_info": info,
            "protocol": AGENT_PROTOCOL,
        }
        _, answer = self.master.call("POST", "/api/agent/register", body)
        self.heartbeats.configure(answer)
        self.wait = float(answer.get("wait", self.wait))
        log.info(
            "registered with %s as agent %s (%d slots%s)",
            self.master.url,
            self.name,
            self.slots,
            "" if answer.get("enabled", True) else "; the node is disabled: it takes no tasks",
        )
        return dict(answer)

    def start(self) -> None:
        """Register and start the runner (the fork server the master's config names)."""
        answer = self.register()
        config = dict(answer.get("config") or {})
        config["forkserver_source"] = answer["forkserver_source"]
        sender = self.sender = Sender(HttpChannel(self))
        sender.attachment_limit = int(config.get("attachment_limit", 4 << 30))
        if self.once:
            # One task (a batch job): its request goes out while the fork server starts.
            self.starting = threading.Thread(
                target=self._start_runner, args=(config, sender), name="dirt-agent-runner"
            )
            self.starting.daemon = True
            self.starting.start()
        else:
            self._start_runner(config, sender)
            if self.runner is None:
                raise Fatal(self.runner_error)
        self.heartbeats.start()
        for index in range(self.slots):
            threading.Thread(
                target=self._report_loop, name=f"dirt-agent-report-{index}", daemon=True
            ).start()

    def _start_runner(self, config: dict[str, Any], sender: Sender) -> None:
        """Start the runner the master's config names: `runner`, or why not in `runner_error`."""
        try:
            self.runner = start_runner(config, sender)
        except Exception as exc:
            self.runner_error = f"cannot run tasks: {exc}"
        finally:
            self.runner_ready.set()

    def _report_loop(self) -> None:
        """Send results as they come (a job's result frees its slot: see `send_done`)."""
        while True:
            job, wire = self.reports.get()
            try:
                self.send_done(job, wire)
            except Exception:
                log.exception("job %d: result not sent", job.id)

    def poll(self) -> None:
        """Ask for jobs while slots are free (and for `prefetch` more while they are busy),
        until the agent stops."""
        self.poller = threading.get_ident()
        try:
            self._poll()
        finally:
            self.polled.set()

    def _poll(self) -> None:
        backoff = Backoff()
        after_none = -1  # jobs held when the master last had none beyond the busy slots
        while not self.stopping.is_set():
            with self.cond:
                while not self.stopping.is_set() and (
                    len(self.jobs) >= self.slots + self.prefetch
                    or (self.once and self.taken)
                    or 0 <= after_none <= len(self.jobs)
                ):
                    self.cond.wait()
                held = len(self.jobs)
            if self.stopping.is_set():
                return
            # With every slot busy, a job to queue is asked for, not waited for: a request
            # held by the master would claim for this agent whatever its state, even hung;
            # the answer to the next result brings one anyway.
            busy = held >= self.slots
            self.holding = not busy
            body: dict[str, Any] = {"node": self.name, "wait": 0 if busy else self.wait}
            if self.prefetch:
                body["prefetch"] = self.prefetch
            try:
                status, answer = self.master.send(
                    "POST", "/api/agent/jobs/request", body, timeout=self.wait + 30
                )
            except Unreachable as exc:
                if self.stopping.is_set():
                    return
                if not backoff.delay:
                    log.warning("master unreachable (%s); trying again", exc)
                backoff.wait(self.stopping)
                continue
            except Refused as exc:
                if exc.status == 404:
                    log.warning("the master does not know this agent (%s): registering", exc)
                    self.register()
                    continue
                raise Fatal(f"the master refused this agent: {exc.message}") from None
            if backoff.delay:
                log.info("master reachable again")
            backoff.reset()
            got = status == 201 and isinstance(answer, dict)
            after_none = held if busy and not got else -1  # if so, ask again once a job is gone
            if got and self.stopping.is_set():
                self._give_back(Job(answer), "the agent is stopping")
            elif got:
                self.run(answer)

    def run(self, offer: dict[str, Any]) -> None:
        with self.cond:
            job = self._take(offer)
            now = self._admit(job, offer)
        if now:
            self._start(job, offer)

    def _take(self, offer: dict[str, Any]) -> Job:
        """The offered job, held (self.cond held)."""
        job = Job(offer)
        self.jobs[job.key] = job
        self.taken += 1
        return job

    def _admit(self, job: Job, offer: dict[str, Any]) -> bool:
        """Whether `job` starts now, in a free slot; else it is queued for the next one
        (self.cond held)."""
        if self.running < self.slots and not self.queued:
            self.running += 1
            job.started = True
            return True
        self.queued.append((job, offer))
        return False

    def _slot_freed(self, job: Job) -> None:
        """`job` ended (or will never start): the first queued job takes its slot at once."""
        with self.cond:
            if job.done:
                return
            job.done = True
        self.heartbeats.stop_beating(job)
        with self.cond:
            if not job.started:
                return  # dropped from the queue: it held no slot
            self.running -= 1
            following = None
            while self.queued and not self.stopping.is_set():
                queued, offer = self.queued.pop(0)
                if not queued.over:
                    following = (queued, offer)
                    self.running += 1
                    queued.started = True
                    break
        if following is not None:
            self._start(*following)

    def _kill(self, job: Job) -> None:
        """Kill the job's process; a job still queued leaves the queue and reports that it
        never started."""
        with self.cond:
            queued = [pair for pair in self.queued if pair[0] is job]
            for pair in queued:
                self.queued.remove(pair)
        if queued:
            self.reports.put((job, NEVER_STARTED))
        elif self.runner is not None:
            self.runner.kill(job.key)

    def _start(self, job: Job, offer: dict[str, Any]) -> None:
        source = base64.b64decode(offer["source"])
        if hashlib.sha256(source).hexdigest() != offer["sha256"]:
            self.send_done(job, (None, "task module damaged on its way: sha256 differs", None,
                                 None, False, False, 0.0, b""))  # fmt: skip
            return
        log.info(
            "job %d: task %s (%s), attempt %d", job.id, job.task_id, offer["name"], job.attempt
        )
        self.runner_ready.wait()
        if self.runner is None:
            self.send_done(job, (None, self.runner_error, None, None, False, False, 0.0, b""))
            return
        request = RunRequest(
            job.key,
            offer["name"],
            offer["sha256"],
            source,
            offer.get("kwargs") or {},
            offer.get("timeout"),
            offer.get("path", ""),
        )
        self.runner.run(request)

    def _held(self) -> list[Job]:
        with self.cond:
            return list(self.jobs.values())

    def job(self, key: str) -> Job | None:
        with self.cond:
            return self.jobs.get(key)

    def _release(self, job: Job, offer: dict[str, Any] | None = None) -> None:
        """The job is reported: its slot is free, or taken at once by `offer`, the next job
        the master gave with its answer."""
        with self.cond:
            self.jobs.pop(job.key, None)
            if self.once and self.taken and not self.jobs:
                self.stopping.set()
            following = self._take(offer) if offer is not None else None
            now = False
            if following is not None and offer is not None and not self.stopping.is_set():
                now = self._admit(following, offer)
            self.cond.notify_all()
        if following is None:
            return
        assert offer is not None
        if self.stopping.is_set():
            self._give_back(following, "the agent is stopping")
            with self.cond:
                self.jobs.pop(following.key, None)
            return
        if now:
            self._start(following, offer)

    # ---- reports (the Sender's thread) ---------------------------------------------------

    def _report(self, job: Job, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        """Send a report about `job` until the master answers; None when it refused it (the
        job is then over here too). Tried again as often as heartbeats go: the report keeps
        the job's lease as they did, so it must reach a restarted master within a lease."""
        headers = {**job.headers, **headers}
        try:
            return self.master.call(
                method, job.path + path, body, headers, most=self.heartbeats.every
            )[1]
        except Unreachable:
            return None  # stopping
        except Refused as exc:
            self._refused(job, exc)
            return None

    def _refused(self, job: Job, exc: Refused) -> None:
        if job.over:
            return
        job.over = True
        self.heartbeats.stop_beating(job)
        if exc.status == 409:
            log.warning("job %d: the master refused its report: %s", job.id, exc.message)
        else:
            log.error("job %d: refused (%s)", job.id, exc)
        self._kill(job)
        if exc.status == 401:
            # A job token the master no longer takes: the agent's own token was revoked.
            self.stop(f"job {job.id} refused: {exc.message}")

    def send_output(self, job: Job, offset: int, data: bytes) -> None:
        end = offset + len(data) - 1
        self._report(job, "PATCH", "/output", data, {"Content-Range": f"bytes {offset}-{end}/*"})
        job.output_end = offset + len(data)

    def send_blob(self, job: Job, index: int, data: bytes) -> None:
        offset = job.uploaded.get(index, 0)
        end = offset + len(data) - 1
        headers = {"Content-Range": f"bytes {offset}-{end}/*"}
        self._report(job, "PATCH", f"/attachments/{index}", data, headers)
        job.uploaded[index] = offset + len(data)

    def send_done(self, job: Job, wire: tuple[Any, ...]) -> None:
        self._slot_freed(job)
        try:
            results, error, exit_code, sig, timed_out, killed, duration, output = wire
            if output and not job.over:
                self.send_output(job, job.output_end, output)
            if error is None and not job.over:
                results = self._upload_contents(job, results)
            outcome = {
                "results": results,
                "error": error,
                "exit_code": exit_code,
                "signal": sig,
                "timed_out": bool(timed_out),
                "killed": bool(killed),
                "duration": float(duration or 0.0),
            }
            try:
                json.dumps(outcome)
            except (TypeError, ValueError) as exc:
                outcome.update(results=None, error=f"results not JSON-serialisable: {exc}")
            offer = None
            if not job.over:
                take_next = not (self.once or self.stopping.is_set())
                body = {"state": "finished", "outcome": outcome, "next": take_next}
                if take_next and self.prefetch:
                    body["prefetch"] = self.prefetch
                answer = self._report(job, "PUT", "", body, {})
                if answer is not None:
                    log.info("job %d: task %s %s", job.id, job.task_id, answer.get("state"))
                    offer = answer.get("next")
        finally:
            self._release(job, offer)

    def _upload_contents(self, job: Job, results: Any) -> Any:
        """Attachments whose contents are bytes go as uploads (JSON carries no bytes)."""
        items = results.get("attachments") if isinstance(results, dict) else None
        if not isinstance(items, list):
            return results
        sent = []
        for index, item in enumerate(items):
            contents = item.get("contents") if isinstance(item, dict) else None
            if isinstance(contents, (bytes, bytearray)):
                data = bytes(contents)
                for start in range(0, len(data), CHUNK_SIZE):
                    self.send_blob(job, index, data[start : start + CHUNK_SIZE])
                item = {k: v for k, v in item.items() if k != "contents"}
                item.update(stream=index, text=False)
            sent.append(item)
        return {**results, "attachments": sent}

    # ---- stopping ------------------------------------------------------------------------

    def stop(self, fatal: str | None = None) -> None:
        """Take no more work (a request for work held by the master is cut); with `fatal`, the
        agent cannot go on: every request is cut."""
        if fatal is not None and self.fatal is None:
            self.fatal = fatal
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        if fatal is not None or self.holding:
            # A request answered at once is let finish: a job it brings goes back at once.
            self.master.cut(None if fatal is not None else self.poller)

    def _give_back(self, job: Job, reason: str) -> None:
        """Tell the master the job will not run here: its task waits again at once."""
        job.over = True
        self.heartbeats.stop_beating(job)
        try:
            body = {"state": "abandoned", "reason": reason}
            self.master.send("PUT", job.path, body, job.headers, timeout=10)
        except (Unreachable, Refused) as exc:
            log.warning("job %d: not given back (%s); its lease will run out", job.id, exc)

    def shutdown(self) -> None:
        """Give running jobs back (their tasks wait again at once); let results on their way
        arrive; stop the runner."""
        if self.poller is not None:
            self.polled.wait(10)  # its request was cut, or is answered at once
        with self.cond:
            running = [job for job in self.jobs.values() if not (job.over or job.done)]
            for job in running:
                job.over = True
        for job in running:
            if self.runner is not None and job.started:
                self.runner.kill(job.key)
            self._give_back(job, self.fatal or "the agent was stopped")
        with self.cond:
            self.cond.wait_for(
                lambda: not any(job.done and not job.over for job in self.jobs.values()), 10
            )
        if self.starting is not None:
            self.starting.join()  # a fork server starting now must be stopped too
        if self.runner is not None:
            self.runner.stop()
        if self.sender is not None:
            self.sender.close(timeout=10)
