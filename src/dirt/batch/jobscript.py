"""The script a task's batch job runs: announce itself, set its environment, exec one command.

For a Slurm node the command is the served one-file agent, run once for exactly one task
(docs/batch.md):

    render_job_script(
        ["python3", "-", base_url, "--once"],
        task_id=..., attempt=...,
        environment={"DIRT_AGENT_TOKEN": one_use_token},
        program=agent_source,          # the bytes GET /agent.py serves
    )

The program is embedded as a quoted here-document and read by `python3 -`, so a compute host
needs nothing but python3: no download, no file left behind. The token travels in the
environment, not in argv, where any user of the compute host could read it with `ps`.

`exec` makes the command the batch script's own process: its exit status and the signal that
kills it are what Slurm records (FAILED with exit code N, CANCELLED, TIMEOUT), and what
Slurm sends the job (scancel, the time limit) reaches it directly. sh forks a child to write a
here-document longer than 4 KB; after the `exec` that child is the program's to reap (the agent
does, `reap_strays`): a zombie left in the job's process group makes slurmstepd wait 1-3 s more
before it ends the job.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from string import Template

JOB_SCRIPT = Template(
    """\
#!/bin/sh
# dirt: task $task_id, attempt $attempt, run as one batch job.
# Written by dirt for this attempt only; its token is refused for any other attempt.
$exports
echo "dirt: task $task_id attempt $attempt: job $${SLURM_JOB_ID:-?} on $$(hostname)" >&2
exec $command$program
"""
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SAFE_ID = re.compile(r"[A-Za-z0-9._:@+-]{1,200}")


def render_job_script(
    command: Sequence[str],
    *,
    task_id: str,
    attempt: int,
    environment: Mapping[str, str] | None = None,
    program: str | None = None,
) -> str:
    """The job script for one attempt of one task.

    `command` is exec'd with `environment` exported; `program`, if given, is its stdin
    (for `python3 -`). Raises ValueError for a value that cannot be put in a script safely.
    """
    if not command:
        raise ValueError("a job script needs a command")
    if not SAFE_ID.fullmatch(task_id):
        raise ValueError(f"task id {task_id!r} cannot be written into a job script")
    exports = []
    for name, value in (environment or {}).items():
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        exports.append(f"{name}={shlex.quote(value)}; export {name}")
    return JOB_SCRIPT.substitute(
        task_id=task_id,
        attempt=int(attempt),
        exports="\n".join(exports),
        command=shlex.join(command),
        program=_here_document(program) if program is not None else "",
    )


def _here_document(program: str) -> str:
    """` <<'END'\\n...\\nEND`: quoted, so the shell expands nothing inside."""
    if "\r" in program:
        raise ValueError("the program has carriage returns; sbatch refuses DOS line breaks")
    body = program if program.endswith("\n") else program + "\n"
    end = "DIRT_PROGRAM_" + hashlib.sha256(body.encode()).hexdigest()[:16]
    if end in body.splitlines():
        raise ValueError("the program contains its own here-document terminator")
    return f" <<'{end}'\n{body}{end}"
