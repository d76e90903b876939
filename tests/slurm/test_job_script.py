"""The job script a task's batch job runs, tried with stand-in commands on the real cluster.

In phase 2 the command is the served agent (`python3 - URL --once` with agent.py as the
embedded program); what must hold for any command is tested here: it runs on the compute host
with the job's environment, its output lands in the --output file, and its exit status, the
signal that killed it, or scancel are what poll() reports.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dirt.batch import slurm
from dirt.batch.commands import LocalRunner
from dirt.batch.jobscript import render_job_script
from tests.conftest import wait_for
from tests.slurm.cluster import SlurmCluster
from tests.slurm.conftest import SubmitJob, wait_ended, wait_running

pytestmark = pytest.mark.usefixtures("overdue_job")


def script(*command: str, **kwargs: object) -> str:
    return render_job_script(command, task_id="t1", attempt=2, **kwargs)  # type: ignore[arg-type]


def test_the_command_runs_on_the_compute_host_with_the_jobs_environment(
    submit_job: SubmitJob,
    slurm_runner: LocalRunner,
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.txt"
    shown = 'echo "host=$(hostname) job=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION"'
    job = submit_job(
        script(
            "sh",
            "-c",
            shown + '; echo "value=$DIRT_VALUE"',
            environment={"DIRT_VALUE": "it's $HOME; `not` run"},
        ),
        output_path=str(output),
    )
    status = wait_ended(slurm_runner, job)
    assert status.state == "COMPLETED" and status.exit_code == 0
    assert status.host == slurm_cluster.node_name
    lines = output.read_text().splitlines()
    assert lines == [
        f"dirt: task t1 attempt 2: job {job} on {slurm_cluster.node_name}",
        f"host={slurm_cluster.node_name} job={job} partition=debug",
        "value=it's $HOME; `not` run",
    ]


def test_an_embedded_program_is_the_commands_stdin(
    submit_job: SubmitJob, slurm_runner: LocalRunner, tmp_path: Path
) -> None:
    output = tmp_path / "out.txt"
    program = (
        "import os, sys\nprint('argv', sys.argv[1:])\nprint('job', os.environ['SLURM_JOB_ID'])\n"
    )
    job = submit_job(
        script("python3", "-", "http://master:8080", "--once", program=program),
        output_path=str(output),
    )
    assert wait_ended(slurm_runner, job).state == "COMPLETED"
    assert output.read_text().splitlines()[1:] == [
        "argv ['http://master:8080', '--once']",
        f"job {job}",
    ]


def test_the_commands_exit_code_is_the_jobs(
    submit_job: SubmitJob, slurm_runner: LocalRunner
) -> None:
    status = wait_ended(slurm_runner, submit_job(script("sh", "-c", "exit 3")))
    assert (status.state, status.exit_code, status.signal) == ("FAILED", 3, None)
    assert status.describe() == "FAILED: exit code 3"


def test_a_missing_command_fails_the_job_with_127(
    submit_job: SubmitJob, slurm_runner: LocalRunner, tmp_path: Path
) -> None:
    output = tmp_path / "out.txt"
    job = submit_job(script("no-such-python3"), output_path=str(output))
    status = wait_ended(slurm_runner, job)
    assert (status.state, status.exit_code) == ("FAILED", 127)
    assert "no-such-python3" in output.read_text()


def test_the_signal_that_kills_the_command_is_the_jobs(
    submit_job: SubmitJob, slurm_runner: LocalRunner
) -> None:
    status = wait_ended(slurm_runner, submit_job(script("sh", "-c", "kill -KILL $$")))
    assert (status.state, status.signal) == ("FAILED", signal.SIGKILL)
    assert status.describe() == "FAILED: killed by signal 9"


def test_a_command_killed_from_outside_is_seen_killed(
    submit_job: SubmitJob, slurm_runner: LocalRunner, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    job = submit_job(script("sh", "-c", f"echo $$ > {pid_file}; exec sleep 600"))
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30))
    os.kill(pid, signal.SIGKILL)  # as the OOM killer or an administrator would
    status = wait_ended(slurm_runner, job)
    assert (status.state, status.signal) == ("FAILED", signal.SIGKILL)


def test_scancel_of_a_running_job_shows_cancelled(
    submit_job: SubmitJob, slurm_runner: LocalRunner
) -> None:
    job = submit_job(script("sleep", "600"))
    assert wait_running(slurm_runner, job).state == "RUNNING"
    slurm.cancel(job, runner=slurm_runner)
    status = wait_ended(slurm_runner, job)
    assert status.state == "CANCELLED"
    assert status.describe().startswith("CANCELLED")


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"environment": {"BAD NAME": "x"}}, "not an environment variable name"),
        ({"program": "print(1)\r\n"}, "DOS line breaks"),
    ],
)
def test_values_that_cannot_go_into_a_script_are_refused(
    kwargs: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        script("python3", "-", **kwargs)


def test_a_task_id_that_could_break_the_script_is_refused() -> None:
    with pytest.raises(ValueError, match="task id"):
        render_job_script(["true"], task_id="t1\nrm -rf /", attempt=1)
