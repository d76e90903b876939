"""The dispatcher's side of batch nodes (docs/batch.md): for each `slurm:PARTITION` node, a
thread of its own (a slow login host stalls no other node) that

- submits: waiting tasks the node can run, up to its --max-jobs, each reserved as a job with a
  one-use token (dirt.service.batch) and handed to `sbatch --parsable` with a job script that
  runs the served agent.py `--once` for exactly that attempt, at `[web] base_url`;
- cancels: `scancel`, in one call, the jobs of tasks someone cancelled, as soon as it hears;
- tracks: one batched `squeue` per poll for all the node's open jobs; a job that ended (or that
  Slurm forgot) without its agent reporting makes the attempt lost, with Slurm's own state as
  the reason, after one more poll of grace for a result in flight; a job whose agent stopped
  heartbeating (its agent job lost) is scancelled;
- re-adopts, when it starts, the node's open jobs from the store: queued and running ones are
  polled like any other; one caught between its row and sbatch's answer is looked up by name.

Results never come this way: the job's agent sends them over HTTP. If Slurm does not answer
(BatchUnavailableError), nothing is concluded about any job: the node shows the error and the
driver tries again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from dirt.batch import BatchError, BatchUnavailableError, slurm
from dirt.batch.commands import CommandRunner
from dirt.batch.jobs import BatchJob, BatchNode, Phase
from dirt.batch.jobscript import render_job_script
from dirt.batch.remote import runner_for
from dirt.batch.sbatch_args import required_features, with_features
from dirt.batch.slurm import JobPhase, JobStatus
from dirt.errors import DirtError
from dirt.models import Node
from dirt.service import Service
from dirt.service.batch import Submission

log = logging.getLogger("dirt")

STORE_S = 0.5  # cancels and new tasks are looked for this often without a local wake-up
# A full node whose job reported polls again this soon: the job ends a moment after its result,
# and its slot goes to the next task at the poll that sees it ended.
FREED_POLL_S = 0.2
REFRESH_S = 2.0  # batch nodes added, changed or removed are noticed this often
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
OUTPUT_TAIL_LINES = 20
RESCANCEL_S = 10.0  # a job scancelled for a cancel, still open, is scancelled again this late
AGENT_GONE = ("lost", "timed_out", "abandoned")  # agent job ends the Slurm job outlives


class BatchDriver:
    """Drives every enabled batch node of the store, each on a thread of its own."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._stopping = threading.Event()
        self._drivers: dict[str, NodeDriver] = {}
        self._thread = threading.Thread(target=self._run, name="dirt-batch", daemon=True)
        service.add_listener(self._on_commit)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop driving (jobs go on in Slurm: the next dispatcher re-adopts them)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def _on_commit(self, _seq: int) -> None:
        for driver in list(self._drivers.values()):
            driver.wake.set()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._refresh()
                except Exception:
                    log.exception("batch nodes not read; trying again")
                self._stopping.wait(REFRESH_S)
        finally:
            for driver in self._drivers.values():
                driver.stop()
            for driver in self._drivers.values():
                driver.join()

    def _refresh(self) -> None:
        # Only the batch nodes whose lease this dispatcher holds (dispatch.membership): with
        # several masters each node has one driver, as an SSH node has.
        me = self.service.master_id
        found = {
            node.address: (node, settings)
            for node, settings in self.service.batch_nodes()
            if node.driver == me
        }
        for address in list(self._drivers):
            if address not in found or self._drivers[address].settings != found[address][1]:
                self._drivers.pop(address).stop()
        for address, (node, settings) in found.items():
            driver = self._drivers.get(address)
            if driver is None:
                driver = NodeDriver(self.service, node, settings)
                self._drivers[address] = driver
                driver.start()
            driver.node = node


class NodeDriver:
    """Submits, polls and cancels the jobs of one batch node."""

    def __init__(
        self,
        service: Service,
        node: Node,
        settings: BatchNode,
        runner: CommandRunner | None = None,
    ) -> None:
        self.service = service
        self.node = node
        self.settings = settings
        self.runner = runner or runner_for(settings.login_host, service.settings.nodes)
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self._ended_once: set[int] = set()
        self._scancelled: dict[int, float] = {}  # job id: when scancel went for a cancel
        self._last_poll = 0.0
        self.poll_every = service.settings.batch.poll_interval  # [batch] poll_interval
        self._freeing = False  # the node is full and a job of it reported: poll soon
        self._failures = 0
        self._error: str | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"dirt-batch-{node.address}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join(15)
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    # ---- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        log.info("batch node %s: driving (%d jobs at once)", self.node.address, self.node.slots)
        try:
            self._adopt()
        except Exception as exc:
            self._trouble(exc)
        while not self._stopping.is_set():
            self.wake.wait(self._pause())
            self.wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._step()
                self._healthy()
            except (BatchError, DirtError, OSError) as exc:
                self._trouble(exc)
            except Exception as exc:  # one bad job must never stop the node's driver
                log.exception("batch node %s: step failed", self.node.address)
                self._trouble(exc)

    def _pause(self) -> float:
        if self._failures:
            return BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1]
        every = min(self.poll_every, FREED_POLL_S) if self._freeing else self.poll_every
        return min(STORE_S, max(0.01, self._last_poll + every - time.monotonic()))

    def _healthy(self) -> None:
        if self._failures or self._error:
            log.info("batch node %s: Slurm answers again", self.node.address)
            self.service.batch_node_seen(self.node.address, None)
        self._failures = 0
        self._error = None

    def _trouble(self, exc: Exception) -> None:
        self._failures += 1
        error = (
            f"Slurm not answering: {exc}" if isinstance(exc, BatchUnavailableError) else str(exc)
        )
        if error != self._error:
            log.warning("batch node %s: %s", self.node.address, error)
            self._error = error
            try:
                self.service.batch_node_seen(self.node.address, error)
            except Exception:
                log.debug("node error not stored", exc_info=True)

    def _step(self) -> None:
        self._cancel()
        jobs = self.service.open_batch_jobs(self.node.address)
        room = self.node.slots - len(jobs)
        submitted = self._submit(room)
        if submitted or self._poll_due(room):
            self._last_poll = time.monotonic()
            self._poll(jobs + submitted)

    def _poll_due(self, room: int) -> bool:
        """Every poll_interval; on a full node, soon after one of its jobs reported."""
        since = time.monotonic() - self._last_poll
        self._freeing = False
        if since >= self.poll_every:
            return True
        self._freeing = room <= 0 and self.service.batch_jobs_reported(self.node.address) > 0
        return self._freeing and since >= FREED_POLL_S

    # ---- submitting ----------------------------------------------------------------------

    def _submit(self, room: int) -> list[BatchJob]:
        made = self.service.reserve_batch_jobs(self.node, room)
        done = []
        for index, submission in enumerate(made):
            try:
                job_id = self._sbatch(submission)
            except BatchUnavailableError as exc:
                for left in made[index:]:
                    self.service.batch_not_submitted(left.job, exc, refused=False)
                raise
            except BatchError as exc:
                log.warning("batch node %s: task %s refused: %s", self.node.address,
                            submission.task.id, exc)  # fmt: skip
                self.service.batch_not_submitted(submission.job, exc, refused=True)
                continue
            self.service.batch_submitted(submission.job, job_id)
            done.append(submission.job)
        return done

    def _sbatch(self, submission: Submission) -> str:
        from dirt import remote
        from dirt.web.agent_api import AGENT_FILE

        job = submission.job
        base_url = self.service.settings.web.base_url.rstrip("/")
        if not base_url:
            raise BatchUnavailableError(
                "[web] base_url is not set: a batch job's agent needs the master's address"
            )
        # -S: the agent needs the standard library only, and a site with .pth files costs
        # each job its start-up time; the tasks' fork server starts with the full site.
        python = self.service.settings.batch.python
        script = render_job_script(
            [python, "-S", "-", base_url, "--once", "--slots", "1"],
            task_id=job.task_id,
            attempt=job.attempt,
            environment={"DIRT_AGENT_TOKEN": submission.token},
            program=remote.source(AGENT_FILE),
        )
        timeout = submission.timeout
        return slurm.submit(
            script,
            partition=self.settings.partition,
            job_name=job.job_name,
            output_path=self._output_path(job),
            time_limit=timeout + 60 if timeout else None,
            extra_args=with_features(
                self.settings.submit_args, required_features(submission.task.requires)
            ),
            runner=self.runner,
        )

    def _output_path(self, job: BatchJob) -> str:
        return f"{self.settings.workdir.rstrip('/')}/{job.job_name}.out"

    # ---- tracking ------------------------------------------------------------------------

    def _poll(self, jobs: list[BatchJob]) -> None:
        known = [j for j in jobs if j.job_id is not None]
        if not known:
            return
        statuses = slurm.poll([j.job_id for j in known if j.job_id], self.runner)
        kill: list[BatchJob] = []
        for job in known:
            assert job.job_id is not None
            status = statuses.get(job.job_id)
            if status is None:
                continue
            if status.phase is JobPhase.QUEUED:
                self.service.batch_state(job, status.describe(), None)
                continue
            if status.phase is JobPhase.RUNNING:
                self.service.batch_state(job, status.describe(), status.host)
                if self.service.batch_job_over(job) in AGENT_GONE:
                    kill.append(job)
                continue
            self._ended(job, status)
        if kill:
            self._scancel(kill, "its agent stopped reporting")

    def _ended(self, job: BatchJob, status: JobStatus) -> None:
        over = self.service.batch_job_over(job)
        if over is not None:
            self.service.batch_job_ended(job, over, status.describe())
            self._ended_once.discard(job.id)
            return
        if job.id not in self._ended_once:
            self._ended_once.add(job.id)  # a result may be on its way: one more poll
            self.wake.set()
            return
        self._ended_once.discard(job.id)
        if status.phase is JobPhase.GONE:
            reason = f"Slurm job {job.job_id} is no longer known to Slurm"
        else:
            reason = f"Slurm job {job.job_id} ended without a result: {status.describe()}"
        tail = self._output_tail(job)
        if tail:
            reason += f"\n--- the end of its output ---\n{tail}"
        _requeued, _failed = self.service.lose_batch_job(job, reason)
        log.warning("batch node %s: task %s: %s", self.node.address, job.task_id,
                    reason.splitlines()[0])  # fmt: skip

    def _output_tail(self, job: BatchJob) -> str:
        """The last lines of the job's output file (here, or on the login host)."""
        path = self._output_path(job)
        try:
            if self.settings.login_host:
                done = self.runner.run(["tail", "-n", str(OUTPUT_TAIL_LINES), path])
                return done.stdout.strip() if done.rc == 0 else ""
            lines = Path(os.path.expanduser(path)).read_text(errors="replace").splitlines()
            return "\n".join(lines[-OUTPUT_TAIL_LINES:]).strip()
        except (OSError, BatchError):
            return ""

    # ---- cancelling ----------------------------------------------------------------------

    def _cancel(self) -> None:
        # A job scancel reached stays open until its agent reports or a poll sees it end:
        # it is not scancelled again at every step meanwhile.
        now = time.monotonic()
        open_ = self.service.batch_cancels(self.node.address)
        never = now - RESCANCEL_S
        self._scancelled = {j.id: self._scancelled.get(j.id, never) for j in open_}
        jobs = [j for j in open_ if now - self._scancelled[j.id] >= RESCANCEL_S]
        if jobs:
            self._scancel(jobs, "cancelled in dirt")
            for job in jobs:
                self._scancelled[job.id] = now
                self.service.batch_cancelled(job, "CANCELLED")

    def _scancel(self, jobs: list[BatchJob], why: str) -> None:
        ids = [j.job_id for j in jobs if j.job_id]
        if ids:
            slurm.cancel(*ids, runner=self.runner)
            log.info("batch node %s: scancel %s (%s)", self.node.address, " ".join(ids), why)

    # ---- re-adopting ---------------------------------------------------------------------

    def _adopt(self) -> None:
        """The node's open jobs as an earlier dispatcher left them: queued and running ones are
        polled at the next step; a job written but not known to be submitted is looked for by
        name (found: adopted; not found: nothing ran, its task waits again)."""
        jobs = self.service.open_batch_jobs(self.node.address)
        if jobs:
            log.info("batch node %s: re-adopting %d job(s)", self.node.address, len(jobs))
        limbo = [j for j in jobs if j.phase is Phase.SUBMITTING and j.job_id is None]
        if not limbo:
            return
        found = find_jobs([j.job_name for j in limbo], self.runner)
        for job in limbo:
            job_id = found.get(job.job_name)
            if job_id is not None:
                self.service.batch_submitted(job, job_id)
            else:
                gone = BatchError("not submitted before the master stopped")
                self.service.batch_not_submitted(job, gone, refused=False)


def find_jobs(names: list[str], runner: CommandRunner) -> dict[str, str]:
    """Job ids by job name, of the jobs Slurm knows with these names (one squeue call)."""
    done = runner.run(["squeue", "-h", "-t", "all", "-n", ",".join(names), "-o", "%i %j"])
    if done.rc != 0:
        raise BatchUnavailableError(f"squeue -n: {done.stderr.strip() or done.stdout.strip()}")
    found = {}
    for line in done.stdout.splitlines():
        job_id, _, name = line.strip().partition(" ")
        if job_id and name:
            found[name] = job_id
    return found
