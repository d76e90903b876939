"""A one-host Slurm cluster for the tests of this package, and helpers to submit and await jobs.

The cluster starts once (about 1 s to an idle node) at the first test that needs it and stops
when the last test of tests/slurm is done. A job
that overruns its 1-minute time limit is submitted as early as possible (`overdue_job`) so
that Slurm's TIMEOUT, which cannot come sooner than a minute, ripens while the other tests
run; the TIMEOUT test comes last (test_slurm_last.py), after every other test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dirt.batch import slurm
from dirt.batch.commands import CommandResult, CommandRunner, LocalRunner
from dirt.batch.nodes import describe_batch_node
from dirt.batch.slurm import JobPhase, JobStatus
from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.run import WebServer
from tests.conftest import RunningDispatcher, need
from tests.slurm.cluster import SlurmCluster, slurm_available
from tests.slurm.masters import SLEEPY, Master

_started: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "seconds" in _started:
        terminalreporter.write_line(
            f"slurm tests: one-host cluster (munged, slurmctld, slurmd) idle "
            f"{_started['seconds']:.1f} s after start"
        )


@pytest.fixture(scope="package")
def slurm_cluster() -> Iterator[SlurmCluster]:
    ok, missing = slurm_available()
    need(ok, missing)
    cluster = SlurmCluster()
    try:
        cluster.start()
        _started["seconds"] = cluster.started_in or 0.0
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="package")
def slurm_runner(slurm_cluster: SlurmCluster) -> LocalRunner:
    """Runs Slurm's commands here, against the test cluster."""
    return LocalRunner(env=slurm_cluster.env)


@dataclass
class CountingRunner:
    """A runner that records every command it runs (to count calls)."""

    inner: CommandRunner
    calls: list[list[str]] = field(default_factory=list)

    def run(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        self.calls.append(list(argv))
        return self.inner.run(argv, stdin)


SubmitJob = Callable[..., str]


@pytest.fixture
def submit_job(slurm_runner: LocalRunner, tmp_path: Path) -> Iterator[SubmitJob]:
    """submit_job(script, **submit kwargs) -> job id; every job is cancelled at teardown."""
    submitted: list[str] = []

    def submit(script: str, **options: Any) -> str:
        options.setdefault("partition", "debug")
        options.setdefault("job_name", f"dirt-test-{len(submitted)}")
        options.setdefault("output_path", str(tmp_path / f"job-{len(submitted)}.out"))
        job_id = slurm.submit(script, runner=slurm_runner, **options)
        submitted.append(job_id)
        return job_id

    yield submit
    if submitted:
        slurm.cancel(*submitted, runner=slurm_runner)


def wait_status(
    runner: CommandRunner,
    job_id: str,
    until: Callable[[JobStatus], bool],
    timeout: float = 30,
) -> JobStatus:
    """Poll one job until `until(status)`; fail with its last status after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        status = slurm.poll([job_id], runner)[job_id]
        if until(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status} after {timeout} s")
        time.sleep(0.1)


def wait_ended(runner: CommandRunner, job_id: str, timeout: float = 30) -> JobStatus:
    return wait_status(runner, job_id, lambda s: s.phase is JobPhase.ENDED, timeout)


def wait_running(runner: CommandRunner, job_id: str, timeout: float = 30) -> JobStatus:
    return wait_status(runner, job_id, lambda s: s.phase is not JobPhase.QUEUED, timeout)


@pytest.fixture(scope="package")
def overdue_job(slurm_runner: LocalRunner, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job that runs past its time limit (1 minute, the least Slurm has); never cancelled
    by a test, so it ends as TIMEOUT (Slurm checks time limits every 30 s)."""
    return slurm.submit(
        "#!/bin/sh\nexec sleep 600\n",
        partition="debug",
        job_name="dirt-test-overdue",
        output_path=str(tmp_path_factory.mktemp("overdue") / "job.out"),
        time_limit=1,
        runner=slurm_runner,
    )


@pytest.fixture
def master(
    slurm_cluster: SlurmCluster,
    slurm_runner: LocalRunner,
    service: Service,
    add_task_module: Callable[[str, str], str],
    start_dispatcher: Callable[[Service], RunningDispatcher],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Master]:
    """A master (web server and dispatcher) with the node slurm:debug."""
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    add_task_module("sleepy", SLEEPY)
    server = WebServer(create_app(service, bind_host="127.0.0.1"), "127.0.0.1", 0)
    url = server.start()
    service.settings.web.base_url = url
    settings, info = describe_batch_node(
        "slurm:debug", service.settings, max_jobs=10, workdir=str(tmp_path / "jobs")
    )
    service.save_batch_node(settings, info)
    try:
        yield Master(service, url, slurm_runner, lambda: start_dispatcher(service))
    finally:
        for job in service.open_batch_jobs():
            if job.job_id:
                slurm.cancel(job.job_id, runner=slurm_runner)
        server.stop()
