"""The `slurm:PARTITION` node kind end to end, on the real one-host cluster: tasks become
Slurm jobs that run the served agent.py once, report over HTTP, and are tracked by squeue."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dirt.batch import slurm
from dirt.batch.commands import LocalRunner
from dirt.batch.nodes import describe_batch_node
from dirt.models import NodeKind, TaskState
from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.run import WebServer
from tests.conftest import RunningDispatcher, wait_finished, wait_for
from tests.slurm.cluster import SlurmCluster
from tests.slurm.conftest import wait_ended

SLEEPY = """
import time

def execute(seconds=0, **kwargs):
    time.sleep(seconds)
    return {"success": True, "slept": seconds}
"""


@dataclass
class Master:
    service: Service
    url: str
    runner: LocalRunner
    start: Callable[[], RunningDispatcher]

    def submit(self, name: str = "sleepy", **options: object) -> str:
        submission = self.service.submit_tasks("r1", [name], **options)  # type: ignore[arg-type]
        return submission.tasks[0].id

    def job(self, task_id: str) -> str:
        found = self.service.batch_jobs_of([task_id]).get(task_id)
        return found.job_id if found is not None and found.job_id else ""


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


def test_a_task_routed_to_slurm_succeeds_with_its_job_id(master: Master) -> None:
    node = master.service.node("slurm:debug")
    assert node.kind is NodeKind.SLURM and node.slots == 10
    assert node.sys_info["partition"] == "debug" and node.sys_info["cpu_count"] >= 1
    master.start()
    task_ids = [master.submit(kwargs={"seconds": 0}) for _ in range(3)]
    done = wait_finished(master.service, task_ids, timeout=60)
    assert [t.state for t in done] == [TaskState.SUCCEEDED] * 3
    assert all(t.node == "slurm:debug" and t.results["slept"] == 0 for t in done)
    jobs = master.service.batch_jobs_of(task_ids)
    assert len({j.job_id for j in jobs.values()}) == 3
    for job in jobs.values():
        assert job.job_id and job.job_id.isdigit()
        assert job.compute_host, "the compute host is kept with the attempt"
        assert wait_ended(master.runner, job.job_id).state == "COMPLETED"
    wait_for(lambda: not master.service.open_batch_jobs(), what="jobs closed by the poll")
