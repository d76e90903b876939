"""100 trivial jobs through Slurm: the baseline a Slurm node of dirt is measured against.

The issue's figure: 100 trivial tasks through dirt's `slurm:debug` node must take at most 1.5x
the time of 100 plain `sbatch --wrap` jobs of the same work, submitted and awaited by a shell
loop, in the same run on the same one-host cluster (tests/slurm/cluster.py, started here).

The baseline run is timed from the first sbatch until squeue shows no job of the run pending or
running. The dirt run is timed from the submission of a record of 100 tasks (a served master:
web server and dispatcher in this process, the node `slurm:debug` with --max-jobs 100) until
every task's result is stored: each task is one Slurm job running the served agent.py --once,
which fetches its task over HTTP and reports it. Runs alternate; the median of each side is
quoted, and their ratio (the machine is shared and noisy).

    .venv/bin/python bench/slurm.py [--jobs 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.slurm.cluster import SlurmCluster, slurm_available

# Submit every job, then wait until none is pending or running: what a user's script does.
BASELINE = r"""
set -eu
out=$1; jobs=$2
ids=""
for i in $(seq "$jobs"); do
  ids="$ids,$(sbatch --parsable --job-name="baseline-$i" --output="$out/%j.out" \
    --wrap 'echo ok')"
done
ids=${ids#,}
echo "submitted $(date +%s.%N)" >&2
while squeue -h -t pending,running,configuring,completing -j "$ids" -o %i | grep -q .; do
  sleep 0.1
done
squeue -h -t all -j "$ids" -o %T | sort | uniq -c
"""


def baseline_run(cluster: SlurmCluster, jobs: int) -> tuple[float, float, str]:
    """(seconds to submit, seconds in all, final states) of one shell-loop run."""
    with tempfile.TemporaryDirectory(prefix="dirt-bench-slurm-") as out:
        start = time.time()
        done = subprocess.run(
            ["bash", "-c", BASELINE, "baseline", out, str(jobs)],
            capture_output=True,
            text=True,
            env=cluster.client_env(),
            timeout=600,
            check=True,
        )
        total = time.time() - start
        written = sum(1 for p in Path(out).glob("*.out") if p.read_text().strip() == "ok")
    submitted = float(done.stderr.split("submitted ")[1].split()[0]) - start
    states = " ".join(done.stdout.split())
    if written != jobs:
        raise RuntimeError(f"only {written} of {jobs} jobs wrote their output ({states})")
    return submitted, total, states


TRIVIAL = """
def execute(**kwargs):
    return {"success": True, "said": "ok"}
"""


def real_python() -> str:
    """The interpreter `python3` on PATH runs in the end (behind a wrapper such as a pyenv shim,
    which costs every job its start-up time): what `[batch] python` is set to here."""
    found = subprocess.run(
        ["python3", "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.strip()


def dirt_run(cluster: SlurmCluster, jobs: int, python: str = "python3") -> tuple[float, float, str]:
    """(seconds until every job was submitted, seconds in all, final task states) of one run
    through a dirt master with the node slurm:debug."""
    import os

    from dirt.batch.nodes import describe_batch_node
    from dirt.config import load_settings
    from dirt.dispatch.loop import Dispatcher
    from dirt.project import create_project
    from dirt.service import Service
    from dirt.web.app import create_app
    from dirt.web.run import WebServer

    os.environ.update(cluster.env)
    with tempfile.TemporaryDirectory(prefix="dirt-bench-slurm-") as folder:
        project = create_project(Path(folder) / "proj")
        (project / "tasks" / "trivial.py").write_text(TRIVIAL)
        overrides = {
            "log": {"file": ""},
            "dispatch": {"poll_interval": 0.05},
            "batch": {"python": python},
        }
        service = Service(load_settings(project, overrides=overrides, environ={}))
        server = WebServer(create_app(service, bind_host="127.0.0.1"), "127.0.0.1", 0)
        service.settings.web.base_url = server.start()
        node, info = describe_batch_node(
            "slurm:debug", service.settings, max_jobs=jobs, workdir=str(Path(folder) / "jobs")
        )
        service.save_batch_node(node, info)
        dispatcher = Dispatcher(service)
        import threading

        thread = threading.Thread(target=dispatcher.run, daemon=True)
        thread.start()
        dispatcher.ready.wait(30)
        try:
            start = time.time()
            ids = [t.id for t in service.submit_tasks("r1", ["trivial"] * jobs).tasks]
            submitted = 0.0
            while True:  # a light watch: the master's web server shares this process
                found = service.tasks(ids)
                if not submitted and len(service.batch_jobs_of(ids)) == jobs:
                    submitted = time.time() - start
                if all(t.state.finished for t in found):
                    break
                time.sleep(0.25)
            total = time.time() - start
            states: dict[str, int] = {}
            for t in found:
                states[t.state.value] = states.get(t.state.value, 0) + 1
        finally:
            dispatcher.stop()
            thread.join(30)
            server.stop()
            service.close()
    if states.get("succeeded") != jobs:
        raise RuntimeError(f"not every task succeeded: {states}")
    return submitted or total, total, " ".join(f"{n} {s}" for s, n in states.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--python",
        default=None,
        help="[batch] python of the dirt side (default: the interpreter python3 runs)",
    )
    options = parser.parse_args()
    ok, missing = slurm_available()
    if not ok:
        print(f"cannot start a Slurm cluster: {missing} is missing", file=sys.stderr)
        return 1
    cluster = SlurmCluster()
    try:
        cluster.start()
        cpus = cluster.run("sinfo", "-h", "-o", "%C").stdout.strip().split("/")[-1]
        print(f"one-host cluster: {cpus} CPUs, idle {cluster.started_in:.1f} s after start")
        python = options.python or real_python()
        print(f"the jobs' agent runs with [batch] python = {python}")

        def dirt_side(cluster: SlurmCluster, jobs: int) -> tuple[float, float, str]:
            return dirt_run(cluster, jobs, python)

        sides = {"sbatch --wrap, shell loop": baseline_run, "dirt slurm:debug node": dirt_side}
        totals: dict[str, list[float]] = {name: [] for name in sides}
        submits: dict[str, list[float]] = {name: [] for name in sides}
        for run in range(options.runs):
            for name, side in sides.items():
                submitted, total, states = side(cluster, options.jobs)
                totals[name].append(total)
                submits[name].append(submitted)
                print(
                    f"  run {run + 1}, {name}: submitted in {submitted:.2f} s, "
                    f"all done in {total:.2f} s ({states})"
                )
        print()
        print(f"{options.jobs} trivial jobs, median of {options.runs} runs")
        print(f"{'':34} {'total':>9} {'submit':>9} {'jobs/s':>8}")
        for name in sides:
            median = statistics.median(totals[name])
            print(
                f"{name:34} {median:8.2f}s "
                f"{statistics.median(submits[name]):8.2f}s {options.jobs / median:8.1f}"
            )
        base = statistics.median(totals["sbatch --wrap, shell loop"])
        ours = statistics.median(totals["dirt slurm:debug node"])
        verdict = "met" if ours <= 1.5 * base else "NOT met"
        print(f"dirt / baseline: {ours / base:.2f}x (target at most 1.5x: {verdict})")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
