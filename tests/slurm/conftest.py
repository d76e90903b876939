"""A one-host Slurm cluster for the tests of this package, and helpers to submit and await jobs.

The cluster starts once (about 1 s to an idle node) at the first test that needs it and stops
when the last test of tests/slurm is done. A job
whose time limit is past is started as early as possible (`overdue_job`) so that Slurm's
TIMEOUT, which comes at its next time-limit check (every 30 s), ripens while the other tests
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """test_slurm_last.py runs after every other test of this package (it would come before
    test_slurm_node.py by name): its TIMEOUT test waits for the overdue job, and its node
    failure test takes the node down."""
    here = Path(__file__).parent
    last = [item for item in items if item.path == here / "test_slurm_last.py"]
    if not last:
        return
    moved = set(last)
    rest = [item for item in items if item not in moved]
    after = max((n + 1 for n, item in enumerate(rest) if item.path.parent == here), default=0)
    items[:] = rest[:after] + last + rest[after:]


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
    """A running job whose time limit is already past; never cancelled by a test, so it ends
    as TIMEOUT. Submitted with 1 minute (the least sbatch takes), then, once it runs, lowered
    to 0 minutes by the operator (`scontrol update TimeLimit=0`): Slurm then ends it at its
    next time-limit check (every 30 s) instead of 60-90 s after it started, and its CPU is
    free for the other tests sooner."""
    job_id = slurm.submit(
        "#!/bin/sh\nexec sleep 600\n",
        partition="debug",
        job_name="dirt-test-overdue",
        output_path=str(tmp_path_factory.mktemp("overdue") / "job.out"),
        time_limit=1,
        runner=slurm_runner,
    )
    wait_running(slurm_runner, job_id)
    lowered = slurm_runner.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=0"])
    assert lowered.rc == 0, lowered.stderr
    return job_id


@pytest.fixture
def batch_address() -> str:
    """The batch node the master gets (a module may name another, e.g. through a login host)."""
    return "slurm:debug"


@pytest.fixture
def master(
    batch_address: str,
    slurm_cluster: SlurmCluster,
    slurm_runner: LocalRunner,
    service: Service,
    add_task_module: Callable[[str, str], str],
    start_dispatcher: Callable[[Service], RunningDispatcher],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Master]:
    """A master (web server and dispatcher) with the node `batch_address` (slurm:debug)."""
    for name, value in slurm_cluster.env.items():
        monkeypatch.setenv(name, value)
    add_task_module("sleepy", SLEEPY)
    server = WebServer(create_app(service, bind_host="127.0.0.1"), "127.0.0.1", 0)
    url = server.start()
    service.settings.web.base_url = url
    settings, info = describe_batch_node(
        batch_address, service.settings, max_jobs=10, workdir=str(tmp_path / "jobs")
    )
    service.save_batch_node(settings, info)
    try:
        yield Master(
            service, url, slurm_runner, lambda: start_dispatcher(service), str(tmp_path / "jobs")
        )
    finally:
        for job in service.open_batch_jobs():
            if job.job_id:
                slurm.cancel(job.job_id, runner=slurm_runner)
        server.stop()
