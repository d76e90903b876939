"""The last tests of the package: one waits for Slurm's TIMEOUT of the job submitted with the
first test (see conftest), while every other test ran; one takes the node down, which ends
every job on it."""

from __future__ import annotations

import pytest

from dirt.batch import slurm
from dirt.batch.commands import LocalRunner
from dirt.batch.slurm import JobPhase
from tests.conftest import wait_for
from tests.slurm.cluster import SlurmCluster
from tests.slurm.conftest import wait_ended, wait_status
from tests.slurm.masters import Master, lost_first_attempt, running_job


@pytest.mark.timeout(90)
def test_a_job_past_its_time_limit_is_timeout(overdue_job: str, slurm_runner: LocalRunner) -> None:
    """Last: the job was submitted with the first test of the session (see conftest)."""
    status = wait_status(slurm_runner, overdue_job, lambda s: s.phase is JobPhase.ENDED, 60)
    assert (status.state, status.reason) == ("TIMEOUT", "TimeLimit"), status


def test_a_job_whose_node_fails_is_a_lost_attempt_and_reruns(
    master: Master, slurm_cluster: SlurmCluster
) -> None:
    master.start()
    task_id = master.submit(kwargs={"seconds": 30})
    first = running_job(master, task_id)
    node = f"nodename={slurm_cluster.node_name}"
    slurm_cluster.run("scontrol", "update", node, "state=down", "reason=dirt-test")
    try:
        assert wait_ended(master.runner, first, timeout=30).state == "NODE_FAIL"
        assert lost_first_attempt(master, task_id, first, "NODE_FAIL").outcome == "lost"
    finally:
        # With ReturnToService=2 the node may be back already (then resume is "invalid").
        slurm_cluster.run("scontrol", "update", node, "state=resume", check=False)
        wait_for(lambda: slurm_cluster.node_state() in ("idle", "mixed", "allocated"), 30)
    second = wait_for(lambda: (job := master.job(task_id)) != first and job, 30)
    slurm.cancel(second, runner=master.runner)
