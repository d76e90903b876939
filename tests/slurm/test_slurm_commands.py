"""dirt.batch.slurm against a real one-host Slurm cluster: describe, submit, poll, cancel."""

from __future__ import annotations

import os
import platform
import re

import pytest

from dirt.batch import BatchError, BatchUnavailableError, slurm
from dirt.batch.commands import LocalRunner
from dirt.batch.slurm import GONE, JobPhase
from dirt.requires import parse
from tests.slurm.cluster import SlurmCluster, free_ports
from tests.slurm.conftest import CountingRunner, SubmitJob, wait_ended

pytestmark = pytest.mark.usefixtures("overdue_job")

TRUE = "#!/bin/sh\ntrue\n"
LATER = ["--begin=now+1hour"]  # stays PENDING (BeginTime) until cancelled


def test_partition_info_describes_the_partition_like_a_node(
    slurm_runner: LocalRunner, slurm_cluster: SlurmCluster
) -> None:
    info = slurm.partition_info("debug", slurm_runner)
    assert info["kind"] == "slurm" and info["partition"] == "debug"
    assert (info["state"], info["node_count"], info["nodes"]) == (
        "UP",
        1,
        [slurm_cluster.node_name],
    )
    assert info["cpu_count"] == info["cpus_total"] == os.cpu_count()
    assert 0 < info["memory_total"] <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert info["platform"] == "linux" and info["release"] == platform.release()
    assert info["max_time"] is None
    requirements = [
        f"architecture is {platform.machine()}",
        f"cpu_count is {os.cpu_count()}",
        "platform is linux",
        f"{slurm_cluster.node_name} in nodes",
    ]
    assert all(parse(r).matches(info) for r in requirements)
    assert not parse("gpu in features").matches(info)


def test_an_unknown_partition_is_named_with_the_ones_there_are(
    slurm_runner: LocalRunner,
) -> None:
    with pytest.raises(BatchError, match=r"no partition 'gpu' \(it has: debug\)"):
        slurm.partition_info("gpu", slurm_runner)


def test_a_submitted_job_is_polled_until_completed(
    submit_job: SubmitJob, slurm_runner: LocalRunner, slurm_cluster: SlurmCluster
) -> None:
    job = submit_job(TRUE, job_name="dirt-t1-1", time_limit=61)
    assert job.isdigit()
    shown = slurm_cluster.run("squeue", "-h", "-j", job, "-t", "all", "-o", "%j|%l").stdout
    assert shown.strip() == "dirt-t1-1|2:00"  # 61 s is two minutes to Slurm
    status = wait_ended(slurm_runner, job)
    assert (status.state, status.exit_code, status.describe()) == ("COMPLETED", 0, "COMPLETED")


def test_a_job_that_exits_1_is_failed(submit_job: SubmitJob, slurm_runner: LocalRunner) -> None:
    status = wait_ended(slurm_runner, submit_job("#!/bin/sh\nexit 1\n"))
    assert (status.state, status.reason, status.exit_code) == ("FAILED", "NonZeroExitCode", 1)


def test_a_queued_job_shows_slurms_reason_and_scancel_makes_it_cancelled(
    submit_job: SubmitJob, slurm_runner: LocalRunner
) -> None:
    job = submit_job(TRUE, extra_args=LATER)
    status = slurm.poll([job], slurm_runner)[job]
    assert status.phase is JobPhase.QUEUED and status.describe() == "PENDING: BeginTime"
    slurm.cancel(job, runner=slurm_runner)
    assert wait_ended(slurm_runner, job).state == "CANCELLED"
    slurm.cancel(job, runner=slurm_runner)  # again: nothing to do, no error


def test_polling_many_jobs_is_one_squeue_call(
    submit_job: SubmitJob, slurm_runner: LocalRunner
) -> None:
    jobs = [submit_job(TRUE, extra_args=LATER) for _ in range(6)]
    counting = CountingRunner(slurm_runner)
    statuses = slurm.poll([*jobs, "987654321"], counting)
    assert [call[0] for call in counting.calls] == ["squeue"]
    assert {jobs_id: statuses[jobs_id].state for jobs_id in jobs} == dict.fromkeys(jobs, "PENDING")
    assert statuses["987654321"].state == GONE
    assert slurm.poll([], counting) == {} and len(counting.calls) == 1


def test_a_job_slurm_does_not_know_is_gone(slurm_runner: LocalRunner) -> None:
    statuses = slurm.poll(["987654321", "987654322"], slurm_runner)
    assert {s.phase for s in statuses.values()} == {JobPhase.GONE}
    assert statuses["987654321"].describe() == "no longer known to Slurm"
    slurm.cancel("987654321", runner=slurm_runner)  # nothing to cancel is no error


def test_an_unreachable_controller_is_unavailable_not_gone(
    slurm_cluster: SlurmCluster, submit_job: SubmitJob
) -> None:
    job = submit_job(TRUE, extra_args=LATER)
    dead = slurm_cluster.dir / "dead-controller.conf"
    port = free_ports(1)[0]
    text = re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={port}", slurm_cluster.conf.read_text())
    dead.write_text(text + "MessageTimeout=1\n")
    with pytest.raises(BatchUnavailableError, match="Unable to contact slurm controller"):
        slurm.poll([job], LocalRunner(env={"SLURM_CONF": str(dead)}))


def test_a_submission_slurm_refuses_says_why(slurm_runner: LocalRunner) -> None:
    with pytest.raises(BatchError, match="invalid partition specified: gpu") as refused:
        slurm.submit(
            TRUE, partition="gpu", job_name="x", output_path="/dev/null", runner=slurm_runner
        )
    assert not isinstance(refused.value, BatchUnavailableError)


def test_check_submit_asks_slurm_without_submitting(
    slurm_runner: LocalRunner, slurm_cluster: SlurmCluster
) -> None:
    before = slurm_cluster.job_ids()
    assert "in partition debug" in slurm.check_submit("debug", ["--mem=1M"], slurm_runner)
    with pytest.raises(BatchError, match="Invalid feature specification"):
        slurm.check_submit("debug", ["--constraint=gpu"], slurm_runner)
    assert slurm_cluster.job_ids() == before
