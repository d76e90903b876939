"""Slurm through its command-line tools: a partition's description, submit, poll, cancel.

Every function takes a CommandRunner (this machine by default; a login host over SSH for
`slurm:PARTITION@HOST`) and makes a fixed, small number of calls: `poll` asks about any number
of jobs in one `squeue` call. Accounting (`sacct`) is not assumed: a finished job is known to
`squeue -t all` for MinJobAge seconds (300 by default) and then is reported GONE.

Failures are split by what a caller may conclude: BatchError when Slurm answered no (a bad
partition, a rejected option), BatchUnavailableError when it could not answer (controller down,
authentication broken, login host unreachable), in which case nothing is known about any job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dirt.batch import BatchError, BatchUnavailableError
from dirt.batch.commands import CommandResult, CommandRunner, LocalRunner
from dirt.errors import InputError

LOCAL = LocalRunner()
# ids per squeue call: far more than any --max-jobs, far below any argv limit
POLL_CHUNK = 5000
# stderr of a client that could not get an answer (as opposed to Slurm saying no)
UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "zero bytes were transmitted",
    "communication connection failure",
    "connection refused",
    "slurm temporarily unable",
    "resource temporarily unavailable",
    "munge",
    "authentication",
    "could not establish a configuration source",
)
GONE = "GONE"
# scancel's words for a job that has nothing left to cancel
_NOTHING_TO_CANCEL = ("invalid job id", "already completing or completed")
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+@-]{0,199}")
_FIELD = re.compile(r"(?:^|\s)([A-Z][A-Za-z0-9/:_]*)=")


class JobPhase(StrEnum):
    """What a Slurm job state means to dirt."""

    QUEUED = "queued"  # waiting in Slurm: the task shows as waiting with Slurm's reason
    RUNNING = "running"  # on a compute host (or being set up / torn down there)
    ENDED = "ended"  # Slurm is done with it: its result came in, or the attempt is lost
    GONE = "gone"  # Slurm no longer knows the job: ended longer than MinJobAge ago


PHASES = {
    JobPhase.QUEUED: {
        "PENDING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    },
    JobPhase.RUNNING: {
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SIGNALING",
        "STAGE_OUT",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
    },
    JobPhase.ENDED: {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    },
}
_PHASE_OF = {state: phase for phase, states in PHASES.items() for state in states}


@dataclass(frozen=True)
class JobStatus:
    """One job as `squeue -t all` reports it, or GONE when Slurm no longer knows it."""

    job_id: str
    state: str  # Slurm's state name (PENDING, RUNNING, FAILED, ...) or GONE
    reason: str = ""  # Slurm's reason (Priority, Resources, NonZeroExitCode, ...), "" for None
    exit_code: int | None = None  # of the batch script, once it ended by exiting
    signal: int | None = None  # that killed the batch script, once it ended by a signal
    host: str | None = None  # the compute host running the batch script (BatchHost)

    @property
    def phase(self) -> JobPhase:
        if self.state == GONE:
            return JobPhase.GONE
        # An unknown state (a newer Slurm) counts as running: never lose work on a guess.
        return _PHASE_OF.get(self.state, JobPhase.RUNNING)

    def describe(self) -> str:
        """Slurm's view in a few words: 'PENDING: Priority', 'FAILED: exit code 3'."""
        if self.state == GONE:
            return "no longer known to Slurm"
        detail = self.reason
        if self.phase is JobPhase.ENDED:
            # After the end the reason is often the last scheduling one (Resources, None).
            detail = self.reason if self.state == "FAILED" else ""
            if self.signal:
                detail = f"killed by signal {self.signal}"
            elif self.exit_code:
                detail = f"exit code {self.exit_code}"
        return f"{self.state}: {detail}" if detail else self.state


# ---- partition -> sys_info -------------------------------------------------------------------


def partition_info(partition: str, runner: CommandRunner = LOCAL) -> dict[str, Any]:
    """Describe a partition the way a node's sys_info describes a host, for `requires`.

    Per-node keys hold what one job can get on one node (cpu_count: the most CPUs of any node;
    memory_total: the most memory, in bytes); features, gres and node names are the union
    over the partition's nodes (a job needing one of them asks for it with --constraint).
    architecture, platform and release are strings when all nodes agree, lists when not.
    """
    shown = runner.run(["scontrol", "-o", "show", "partition", partition])
    if shown.rc != 0:
        if "not found" in shown.stderr + shown.stdout:
            raise BatchError(
                f"Slurm has no partition {partition!r} (it has: {_partition_names(runner)})"
            )
        raise _failure("scontrol show partition", shown)
    part = parse_scontrol(shown.stdout)
    if not part:
        raise BatchError(f"scontrol said nothing about partition {partition!r}")
    nodes = _nodes(part[0].get("Nodes", ""), runner)
    fields = part[0]
    os_names = [n.get("OS", "").split() for n in nodes]
    return {
        "kind": "slurm",
        "partition": partition,
        "state": fields.get("State", ""),
        "default": fields.get("Default") == "YES",
        "node_count": _int(fields.get("TotalNodes")) or len(nodes),
        "cpus_total": _int(fields.get("TotalCPUs")) or sum(_int(n.get("CPUTot")) for n in nodes),
        "cpu_count": max((_int(n.get("CPUTot")) for n in nodes), default=0),
        "memory_total": max((_int(n.get("RealMemory")) for n in nodes), default=0) * 2**20,
        "features": _union(n.get("AvailableFeatures", "") for n in nodes),
        "gres": _union(n.get("Gres", "") for n in nodes),
        "nodes": [n.get("NodeName", "") for n in nodes],
        "node_states": _count(n.get("State", "") for n in nodes),
        "architecture": _agreed(n.get("Arch", "") for n in nodes),
        "system": _agreed(words[0] if words else "" for words in os_names),
        "platform": _agreed((words[0] if words else "").lower() for words in os_names),
        "release": _agreed(words[1] if len(words) > 1 else "" for words in os_names),
        "max_time": parse_duration(fields.get("MaxTime", "")),
        "default_time": parse_duration(fields.get("DefaultTime", "")),
        "slurm_version": _agreed(n.get("Version", "") for n in nodes),
    }


def _nodes(expression: str, runner: CommandRunner) -> list[dict[str, str]]:
    if not expression or expression == "(null)":
        return []
    shown = runner.run(["scontrol", "-o", "show", "node", expression])
    if shown.rc != 0:
        raise _failure("scontrol show node", shown)
    return parse_scontrol(shown.stdout)


def _partition_names(runner: CommandRunner) -> str:
    listed = runner.run(["sinfo", "-h", "-o", "%R"])
    names = sorted(set(listed.stdout.split())) if listed.rc == 0 else []
    return ", ".join(names) or "none that sinfo could list"


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """Records of `scontrol -o show ...`: one line each, `Key=value` fields.

    Values may hold spaces (OS=Linux 6.1.0 #1 SMP ...): a field runs up to the next
    ` Key=`, where a key is a capitalised word.
    """
    records = []
    for line in text.splitlines():
        marks = list(_FIELD.finditer(line))
        record = {}
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(line)
            record[mark.group(1)] = line[mark.end() : end].strip()
        if record:
            records.append(record)
    return records


def parse_duration(text: str) -> int | None:
    """Seconds of a Slurm time (`[D-]HH:MM:SS`, `MM:SS`, `M`); None for UNLIMITED/NONE."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not (days or "0").isdigit() or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise BatchError(f"Slurm time {text!r} is not [D-]HH:MM:SS")
    numbers = [int(p) for p in parts]
    if days:  # D-H, D-H:M, D-H:M:S
        numbers += [0] * (3 - len(numbers))
        hours, minutes, seconds = numbers
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    elif len(numbers) == 2:
        hours, (minutes, seconds) = 0, numbers
    else:
        hours, minutes, seconds = 0, numbers[0], 0
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def _union(values: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for value in values:
        if value and value != "(null)":
            found.update(v for v in value.split(",") if v)
    return sorted(found)


def _agreed(values: Iterable[str]) -> str | list[str]:
    distinct = sorted({v for v in values if v and v != "(null)"})
    return distinct[0] if len(distinct) == 1 else distinct if distinct else ""


def _count(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# ---- submit, poll, cancel --------------------------------------------------------------------


def slurm_time(seconds: float) -> str:
    """sbatch's --time for a timeout in seconds: whole minutes, rounded up, at least 1.

    Slurm counts time limits in minutes (seconds are rounded up by Slurm too) and checks them
    every 30 s, so a limit is a backstop, never exact to the second.
    """
    if seconds <= 0:
        raise InputError(f"a time limit must be positive, got {seconds!r} s")
    return str(max(1, math.ceil(seconds / 60)))


def submit(
    script: str,
    *,
    partition: str,
    job_name: str,
    output_path: str,
    time_limit: float | None = None,
    extra_args: Sequence[str] = (),
    runner: CommandRunner = LOCAL,
) -> str:
    """Submit `script` (sent to sbatch on stdin) as one job; return its job id.

    The job is never requeued by Slurm (`--no-requeue`): a job whose node failed is lost,
    and dirt retries it as a new attempt. `extra_args` come from parse_sbatch_args.
    """
    if not JOB_NAME.fullmatch(job_name):
        raise InputError(f"job name {job_name!r}: use letters, digits and ._:+@- (at most 200)")
    argv = ["sbatch", "--parsable", *_submit_options(partition, job_name, output_path)]
    if time_limit is not None:
        argv.append(f"--time={slurm_time(time_limit)}")
    argv += [*extra_args]
    done = runner.run(argv, stdin=script)
    if done.rc != 0:
        raise _failure("sbatch", done)
    job_id = done.stdout.strip().split(";")[0]  # "123" or "123;cluster"
    if not job_id.isdigit():
        raise BatchError(f"sbatch answered {done.stdout.strip()!r} instead of a job id")
    return job_id


def _submit_options(partition: str, job_name: str, output_path: str) -> list[str]:
    return [
        f"--partition={partition}",
        f"--job-name={job_name}",
        f"--output={output_path}",
        "--open-mode=truncate",
        "--no-requeue",
    ]


def check_submit(
    partition: str, extra_args: Sequence[str] = (), runner: CommandRunner = LOCAL
) -> str:
    """Ask sbatch whether a job with these options would be accepted (`--test-only`).

    Returns Slurm's estimate ("Job 12 to start at ... on nodes vm in partition debug"), or
    raises BatchError with Slurm's objection (an unknown option, an impossible constraint).
    """
    argv = ["sbatch", "--test-only", *_submit_options(partition, "dirt-check", "/dev/null")]
    done = runner.run([*argv, *extra_args], stdin="#!/bin/sh\ntrue\n")
    if done.rc != 0:
        raise _failure("sbatch --test-only", done)
    return (done.stderr or done.stdout).strip().removeprefix("sbatch: ")


def poll(job_ids: Iterable[str], runner: CommandRunner = LOCAL) -> dict[str, JobStatus]:
    """The status of every job asked about, in one `squeue` call (per POLL_CHUNK ids).

    A job Slurm does not know (any more) is GONE. Raises BatchUnavailableError when squeue
    could not answer: then nothing may be concluded about any of the jobs.
    """
    ids = list(dict.fromkeys(str(i) for i in job_ids))
    for job_id in ids:
        if not job_id.isdigit():
            raise InputError(f"{job_id!r} is not a Slurm job id")
    found: dict[str, JobStatus] = {}
    for start in range(0, len(ids), POLL_CHUNK):
        found.update(_poll_chunk(ids[start : start + POLL_CHUNK], runner))
    return {job_id: found.get(job_id) or JobStatus(job_id, GONE) for job_id in ids}


def _poll_chunk(ids: list[str], runner: CommandRunner) -> dict[str, JobStatus]:
    fields = "JobID:|,State:|,exit_code:|,BatchHost:|,Reason:|"
    done = runner.run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-O", fields])
    if done.rc != 0:
        # Every id unknown is an error to squeue (while a partly known list is not).
        if "invalid job id" in done.stderr.lower():
            return {}
        raise BatchUnavailableError(f"squeue could not report jobs: {_said(done)}")
    statuses = {}
    for line in done.stdout.splitlines():
        parts = line.split("|", 4)
        if len(parts) < 5 or not parts[0].strip():
            continue
        job_id, state, raw_exit, host, reason = (p.strip() for p in parts)
        reason = reason.removesuffix("|").strip()
        state = state.split()[0] if state else ""  # "CANCELLED by 0" in some versions
        exit_code, signal = _wait_status(state, raw_exit)
        statuses[job_id] = JobStatus(
            job_id=job_id,
            state=state,
            reason="" if reason == "None" else reason,
            exit_code=exit_code,
            signal=signal,
            host=None if host in ("", "n/a", "(null)") else host,
        )
    return statuses


def _wait_status(state: str, raw: str) -> tuple[int | None, int | None]:
    """(exit code, signal) of an ended job from squeue's raw wait status."""
    if _PHASE_OF.get(state) is not JobPhase.ENDED or not raw.isdigit():
        return None, None
    status = int(raw)
    if status & 0x7F:
        return None, status & 0x7F
    return (status >> 8) & 0xFF, None


def cancel(job_id: str, *more: str, runner: CommandRunner = LOCAL) -> None:
    """`scancel` the jobs; one Slurm already forgot or finished is not an error.

    scancel exits 0 even when it could not cancel, so its stderr is what tells.
    """
    ids = [job_id, *more]
    for each in ids:
        if not str(each).isdigit():
            raise InputError(f"{each!r} is not a Slurm job id")
    done = runner.run(["scancel", *ids])
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    problems = [line for line in errors if not any(b in line.lower() for b in _NOTHING_TO_CANCEL)]
    # Exits 0 on errors here (22.05), non-zero in other versions: the lines decide.
    if problems or (done.rc != 0 and not errors):
        raise _failure("scancel", CommandResult(done.rc or 1, done.stdout, "\n".join(problems)))


# ---- helpers ---------------------------------------------------------------------------------


def _said(done: CommandResult) -> str:
    text = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.rc}").splitlines()
    return " / ".join(line.strip() for line in text[-3:])


def _failure(what: str, done: CommandResult) -> BatchError:
    said = _said(done)
    if any(marker in said.lower() for marker in UNREACHABLE):
        return BatchUnavailableError(f"{what}: Slurm did not answer: {said}")
    return BatchError(f"{what} refused: {said}")
