"""Adding a batch node: every check against the settings and the real cluster, before anything
is stored (docs/batch.md, "The slurm:PARTITION[@LOGIN_HOST] node kind")."""

from __future__ import annotations

import os
from typing import Any

from dirt.batch import BatchError, slurm
from dirt.batch.commands import CommandRunner
from dirt.batch.jobs import DEFAULT_MAX_JOBS, DEFAULT_WORKDIR, BatchNode
from dirt.batch.remote import runner_for
from dirt.batch.sbatch_args import parse_sbatch_args
from dirt.config import Settings
from dirt.documents.addresses import parse_batch_address
from dirt.errors import InputError


def describe_batch_node(
    address: str,
    settings: Settings,
    *,
    max_jobs: int | None = None,
    sbatch_args: str = "",
    workdir: str | None = None,
    runner: CommandRunner | None = None,
) -> tuple[BatchNode, dict[str, Any]]:
    """The node's settings and the partition's sys_info; InputError listing every problem:
    no `[web] base_url`, options sbatch or dirt refuse, no such partition, a work folder that
    cannot be made."""
    parsed = parse_batch_address(address)
    problems: list[str] = []
    if not settings.web.base_url:
        problems.append(
            "[web] base_url is not set: a batch job's agent dials the master there (set it in "
            "dirt.toml to an address the compute hosts reach, e.g. http://master.example.org:8080)"
        )
    if max_jobs is not None and max_jobs < 1:
        problems.append(f"--max-jobs {max_jobs}: at least 1")
    args: tuple[str, ...] = ()
    try:
        args = parse_sbatch_args(sbatch_args or "")
    except InputError as exc:
        problems.append(str(exc))
    login = parsed.login.text if parsed.login else None
    runner = runner or runner_for(login, settings.nodes)
    info: dict[str, Any] = {}
    try:
        info = slurm.partition_info(parsed.partition, runner)
        if not problems:
            slurm.check_submit(parsed.partition, args, runner)
    except BatchError as exc:
        problems.append(f"{parsed.text}: {exc}")
    folder = workdir or DEFAULT_WORKDIR
    if not login:
        folder = os.path.expanduser(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            problems.append(f"work folder {folder}: {exc}")
    elif not problems:
        try:
            done = runner.run(["mkdir", "-p", folder])
            if done.rc != 0:
                problems.append(f"work folder {folder} on {login}: {done.stderr.strip()}")
        except BatchError as exc:
            problems.append(f"work folder {folder} on {login}: {exc}")
    if problems:
        raise InputError("; ".join(problems))
    node = BatchNode(
        address=parsed.text,
        partition=parsed.partition,
        login_host=login,
        submit_args=args,
        max_jobs=max_jobs or DEFAULT_MAX_JOBS,
        workdir=folder,
        system=parsed.system,
    )
    return node, info
