"""100 trivial jobs through Slurm: the baseline a Slurm node of dirt is measured against.

The issue's figure: 100 trivial tasks through dirt's `slurm:debug` node must take at most 1.5x
the time of 100 plain `sbatch --wrap` jobs of the same work, submitted and awaited by a shell
loop, in the same run on the same one-host cluster (tests/slurm/cluster.py, started here).

Phase 1 measures the baseline only; the dirt column comes with the Slurm node kind (phase 2,
docs/batch.md). Each run is timed from the first sbatch until squeue shows no job of the run
pending or running; the median of the runs is quoted (the machine is shared and noisy).

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
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
        totals, submits = [], []
        for run in range(options.runs):
            submitted, total, states = baseline_run(cluster, options.jobs)
            totals.append(total)
            submits.append(submitted)
            print(f"  run {run + 1}: submitted in {submitted:.2f} s, all done in {total:.2f} s")
            print(f"         final states: {states}")
        median = statistics.median(totals)
        print()
        print(f"{options.jobs} trivial jobs, median of {options.runs} runs")
        print(f"{'':34} {'total':>9} {'submit':>9} {'jobs/s':>8}")
        print(
            f"{'sbatch --wrap, shell loop':34} {median:8.2f}s "
            f"{statistics.median(submits):8.2f}s {options.jobs / median:8.1f}"
        )
        print(f"{'dirt slurm:debug node':34} {'(phase 2: docs/batch.md)':>28}")
        print(f"target: dirt at most 1.5x the baseline, i.e. {1.5 * median:.1f} s")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
