"""Pull-mode agent: a host the master cannot reach (behind a firewall or NAT, without sshd)
fetches its work from the master over HTTP and runs each task in a process of its own.

The master serves it as one stdlib-only file at ``GET /agent.py`` (``dirt.remote.source``
puts it together from the parts an SSH node runs, then sysinfo.py and this file), run as::

    python3 agent.py URL --token TOKEN [--slots N] [--name NAME] [--once] [--ca FILE]

or as ``dirt agent URL ...`` from an installed dirt. It registers with its host's sys_info (the
probe SSH nodes get), then long-polls for jobs (``POST /api/agent/jobs/request``). A job runs in
the process runner an SSH node uses (a warm fork server: a process per task, killed by process
group), and its output, attachments and outcome go through the same fair, bounded `Sender`, here
to an `HttpChannel` that turns each message into a request: output chunks and attachment chunks
are PATCHed with their offsets, the outcome PUT. A heartbeat thread renews each job's lease and
hears of cancels. Every request but the poll may be sent again safely; the agent sends again,
with backoff, until the master answers: a restart of the master loses nothing but time. A report
the master refuses (409: the job's lease ran out and its task moved on) is dropped.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import logging
import os
import queue
import random
import signal
import socket
import ssl
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from dirt.remote.agent import Sender, start_runner
from dirt.remote.protocol import BLOB, CHUNK_SIZE, DONE, OUTPUT, RunRequest
from dirt.remote.sysinfo import collect

# The agent API's version: sent at registration; the master (dirt.documents.agents) refuses
# another.
AGENT_PROTOCOL = 1
TOKEN_ENV = "DIRT_AGENT_TOKEN"  # where the token may come from instead of --token
JOB_TOKEN_HEADER = "Job-Token"
WAIT = 30.0  # seconds a request for work asks to be held
BACKOFF_FIRST = 0.5
BACKOFF_MOST = 30.0
REQUEST_TIMEOUT = 60.0
EXIT_FATAL = 1

log = logging.getLogger("dirt.agent")


class Refused(Exception):
    """The master answered no (4xx): the same request would get the same answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Unreachable(Exception):
    """No answer from the master (a network error, or 5xx): try again later."""


class Fatal(Exception):
    """The agent cannot go on (its token refused, the master's certificate not trusted)."""


class Backoff:
    """Waits between tries: doubling from BACKOFF_FIRST to BACKOFF_MOST, with jitter."""

    def __init__(self) -> None:
        self.delay = 0.0

    def wait(self, stopping: threading.Event) -> None:
        self.delay = min(BACKOFF_MOST, self.delay * 2 if self.delay else BACKOFF_FIRST)
        stopping.wait(self.delay * random.uniform(0.8, 1.2))

    def reset(self) -> None:
        self.delay = 0.0


class Master:
    """The master's HTTP API: one kept-alive connection per thread."""

    def __init__(
        self, url: str, token: str, stopping: threading.Event, ca: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Fatal(f"{url!r} is not an http:// or https:// URL of a dirt master")
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.token = token
        self.stopping = stopping
        self.context: ssl.SSLContext | None = None
        if self.https:
            try:
                self.context = ssl.create_default_context(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                raise Fatal(f"--ca {ca}: cannot load certificates: {exc}") from None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict[int, http.client.HTTPConnection] = {}  # by thread

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.conn = conn
            with self._lock:
                self._open[threading.get_ident()] = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                self._open.pop(threading.get_ident(), None)

    def cut(self, thread: int | None = None) -> None:
        """Cut the connection of `thread` (every one, when None): a request held there (a
        request for work) ends at once."""
        with self._lock:
            conns = [c for t, c in self._open.items() if thread is None or t == thread]
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[int, Any]:
        """One request: (status, the JSON answer or None). Refused on a 4xx; Unreachable on a
        network error or a 5xx; Fatal when the master's certificate is not trusted."""
        sent = {"User-Agent": f"dirt-agent/{AGENT_PROTOCOL}", **(headers or {})}
        if method != "GET":
            sent["Authorization"] = f"Bearer {self.token}"
        data: bytes | None = None
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
            sent["Content-Type"] = "application/octet-stream"
        elif body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            sent["Content-Type"] = "application/json"
        for again in (False, True):
            conn = self._connection(timeout)
            reused = conn.sock is not None
            try:
                conn.request(method, self.base + path, body=data, headers=sent)
                response = conn.getresponse()
                payload = response.read()
            except ssl.SSLCertVerificationError as exc:
                self._drop()
                raise Fatal(f"{self.url}: the master's certificate is not trusted ({exc}); "
                            "give its CA with --ca FILE") from None  # fmt: skip
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if reused and not again:
                    continue  # a kept-alive connection the server had closed: a new one
                raise Unreachable(f"{self.url}: {exc or type(exc).__name__}") from None
            break
        if response.will_close:
            self._drop()
        answer: Any = None
        if payload and response.getheader("content-type", "").startswith("application/json"):
            try:
                answer = json.loads(payload)
            except ValueError:
                answer = None
        status = response.status
        if status >= 500:
            raise Unreachable(f"{self.url}: {status} {_error(answer, payload)}")
        if status >= 400:
            raise Refused(status, _error(answer, payload))
        return status, answer

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[int, Any]:
        """`send`, again and again with backoff while the master cannot be reached (until the
        agent stops: then Unreachable)."""
        backoff = Backoff()
        while True:
            try:
                answer = self.send(method, path, body, headers, timeout)
            except Unreachable as exc:
                if self.stopping.is_set():
                    raise
                if not backoff.delay:
                    log.warning("master unreachable (%s); trying again", exc)
                backoff.wait(self.stopping)
                continue
            if backoff.delay:
                log.info("master reachable again")
            return answer


def _error(answer: Any, payload: bytes) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        problems = answer.get("problems")
        return str(answer["error"]) + (": " + "; ".join(map(str, problems)) if problems else "")
    return payload[:300].decode("utf-8", "replace") or "no answer"


class Job:
    """One job the master handed this agent, while it runs and until it is reported."""

    __slots__ = (
        "attempt",
        "cancelled",
        "done",
        "id",
        "output_end",
        "over",
        "task_id",
        "token",
        "uploaded",
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
        self.jobs: dict[str, Job] = {}
        self.taken = 0
        self.heartbeat = 5.0
        self.wait = WAIT
        self.fatal: str | None = None
        self.runner: Any = None
        self.runner_ready = threading.Event()  # set once the runner started, or failed to
        self.starting: threading.Thread | None = None  # starts the runner (`--once`)
        self.runner_error = "cannot run tasks: the runner did not start"
        self.sender: Sender | None = None
        self.poller: int | None = None  # the thread that asks for work
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
        self.heartbeat = float(answer.get("heartbeat", self.heartbeat))
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
        threading.Thread(target=self._beat, name="dirt-agent-heartbeat", daemon=True).start()
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
        """Ask for jobs while slots are free, until the agent stops."""
        self.poller = threading.get_ident()
        backoff = Backoff()
        while not self.stopping.is_set():
            with self.cond:
                while not self.stopping.is_set() and (
                    len(self.jobs) >= self.slots or (self.once and self.taken)
                ):
                    self.cond.wait()
            if self.stopping.is_set():
                return
            body = {"node": self.name, "wait": self.wait}
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
            if status == 201 and isinstance(answer, dict):
                self.run(answer)

    def run(self, offer: dict[str, Any]) -> None:
        with self.cond:
            job = self._take(offer)
        self._start(job, offer)

    def _take(self, offer: dict[str, Any]) -> Job:
        """The offered job, in a slot of its own (self.cond held)."""
        job = Job(offer)
        self.jobs[job.key] = job
        self.taken += 1
        return job

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
            self.cond.notify_all()
        if following is None:
            return
        assert offer is not None
        if self.stopping.is_set():
            self._give_back(following, "the agent is stopping")
            with self.cond:
                self.jobs.pop(following.key, None)
            return
        self._start(following, offer)

    # ---- reports (the Sender's thread) ---------------------------------------------------

    def _report(self, job: Job, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
        """Send a report about `job` until the master answers; None when it refused it (the
        job is then over here too)."""
        try:
            return self.master.call(method, job.path + path, body, {**job.headers, **headers})[1]
        except Unreachable:
            return None  # stopping
        except Refused as exc:
            self._refused(job, exc)
            return None

    def _refused(self, job: Job, exc: Refused) -> None:
        if job.over:
            return
        job.over = True
        if exc.status == 409:
            log.warning("job %d: the master refused its report: %s", job.id, exc.message)
        else:
            log.error("job %d: refused (%s)", job.id, exc)
        if self.runner is not None:
            self.runner.kill(job.key)
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
        job.done = True
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

    # ---- heartbeats ----------------------------------------------------------------------

    def _beat(self) -> None:
        """Renew each running job's lease; kill a task the master wants cancelled."""
        while not self.stopping.wait(self.heartbeat):
            with self.cond:
                jobs = [job for job in self.jobs.values() if not job.over]
            for job in jobs:
                if job.done:
                    continue  # its result is on its way (a heartbeat now would cross it)
                try:
                    _, answer = self.master.send("PUT", job.path, {"state": "running"}, job.headers)
                except Unreachable:
                    break  # the next round tries again; the lease outlasts a few misses
                except Refused as exc:
                    if not job.done:
                        self._refused(job, exc)
                    continue
                if isinstance(answer, dict) and answer.get("cancel") and not job.cancelled:
                    job.cancelled = True
                    log.info("job %d: task %s cancelled; killing it", job.id, job.task_id)
                    if self.runner is not None:
                        self.runner.kill(job.key)

    # ---- stopping ------------------------------------------------------------------------

    def stop(self, fatal: str | None = None) -> None:
        """Take no more work (a request for work held by the master is cut); with `fatal`, the
        agent cannot go on: every request is cut."""
        if fatal is not None and self.fatal is None:
            self.fatal = fatal
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        self.master.cut(None if fatal is not None else self.poller)

    def _give_back(self, job: Job, reason: str) -> None:
        """Tell the master the job will not run here: its task waits again at once."""
        job.over = True
        try:
            body = {"state": "abandoned", "reason": reason}
            self.master.send("PUT", job.path, body, job.headers, timeout=10)
        except (Unreachable, Refused) as exc:
            log.warning("job %d: not given back (%s); its lease will run out", job.id, exc)

    def shutdown(self) -> None:
        """Give running jobs back (their tasks wait again at once); let results on their way
        arrive; stop the runner."""
        with self.cond:
            running = [job for job in self.jobs.values() if not (job.over or job.done)]
            for job in running:
                job.over = True
        for job in running:
            if self.runner is not None:
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


def parse_args(argv: list[str] | None, prog: str = "agent.py") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="dirt's pull-mode agent: fetches tasks from the dirt master at URL over "
        "HTTP(S) and runs them, each in a process of its own.",
    )
    parser.add_argument("url", metavar="URL", help="the master, e.g. https://ci.example.org/")
    parser.add_argument(
        "--token",
        default=None,
        help=f"an agent token (`dirt token create NAME --scope agent`); default: ${TOKEN_ENV}",
    )
    parser.add_argument(
        "--slots", type=int, default=None, help="tasks run at once (default: the CPU count)"
    )
    parser.add_argument(
        "--name", default=None, help="the node's name on the master (default: the host name)"
    )
    parser.add_argument("--once", action="store_true", help="run one task, report it, and exit")
    parser.add_argument(
        "--ca", metavar="FILE", default=None,
        help="trust the master's certificate from this CA file (default: the system's CAs)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    if args.slots is not None and args.slots < 1:
        parser.error("--slots must be at least 1")
    args.token = args.token or os.environ.get(TOKEN_ENV)
    if not args.token:
        parser.error(f"give the agent token with --token TOKEN (or ${TOKEN_ENV})")
    return args


def main(argv: list[str] | None = None, prog: str = "agent.py") -> int:
    args = parse_args(argv, prog)
    # Tasks inherit this process's environment: they must not read the agent's token.
    os.environ.pop(TOKEN_ENV, None)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s dirt-agent %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stopping = threading.Event()
    try:
        master = Master(args.url, args.token, stopping, args.ca)
    except Fatal as exc:
        log.error("%s", exc)
        return EXIT_FATAL
    agent = PullAgent(
        master, args.name or socket.gethostname(), args.slots or os.cpu_count() or 1, args.once
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping; running tasks go back to the master", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def work() -> None:
        try:
            agent.start()
            agent.poll()
        except Fatal as exc:
            agent.stop(str(exc))
        except Refused as exc:
            agent.stop(f"the master refused this agent: {exc.message}")
        except Unreachable:
            agent.stop()  # stopping while the master could not be reached
        except Exception as exc:
            log.exception("agent failed")
            agent.stop(f"agent failed: {exc}")

    thread = threading.Thread(target=work, name="dirt-agent-poll", daemon=True)
    thread.start()
    while not stopping.wait(0.5):
        pass
    agent.shutdown()
    if agent.fatal:
        log.error("%s", agent.fatal)
        return EXIT_FATAL
    return 0


def reap_strays(most: float = 1.0) -> None:
    """Wait for the children this process did not start: run as `python3 - <<END` from a
    batch job script that exec'd it, the shell's here-document writer (sh forks one for a
    long here-document) is one. Left a zombie, it keeps the job's process group alive, and
    Slurm (proctrack/pgid) then waits 1 s, 2 s, ... before it ends the job."""
    deadline = time.monotonic() + most
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)


if __name__ == "__main__":
    code = main()
    # Everything is reported and the fork server stopped: skip the interpreter's teardown, so
    # a batch job (`--once`) ends, and frees its cores, the moment its result is in.
    reap_strays()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
