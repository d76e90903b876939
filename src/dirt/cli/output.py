"""`dirt logs` and `dirt fetch`: a task's output, and the files it attached."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

import click

from dirt.cli.base import Context, err
from dirt.errors import StateError

FOLLOW_POLL = 0.25  # seconds between reads of a running task's output
COPY_SIZE = 1 << 20


@click.command()
@click.argument("task_id")
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing output as it comes until the task ends."
)
@click.option("--attempt", type=click.IntRange(1), help="An earlier attempt's output.")
@click.pass_obj
def logs(obj: Context, task_id: str, follow: bool, attempt: int | None) -> None:
    """Print what TASK_ID wrote to stdout and stderr (while it runs too).

    Output over [dispatch] output_limit was not kept: a line says how many bytes are missing.
    With -f, a new attempt (after a lost node) is announced on stderr and printed from its
    start, and when the task ends its state is printed on stderr.
    """
    service = obj.service
    out = sys.stdout.buffer
    number = attempt  # the attempt printed; None until the task has one
    offset = 0
    while True:
        view = service.task_output(task_id, offset, attempt=number)
        if number is None and view.attempt:
            number = view.attempt
        if view.data:
            out.write(view.data)
            out.flush()
        offset = view.next_offset
        if offset < view.end:
            continue  # more is stored: read on at once
        if not follow:
            return
        if not view.live:
            task = service.task(task_id)
            if attempt is None and number is not None and task.attempts > number:
                number, offset = task.attempts, 0
                err.print(f"--- attempt {number} ({task.node or 'node'}) ---", highlight=False)
                continue
            if task.state.finished or attempt is not None:
                reason = f": {task.reason.strip().splitlines()[-1]}" if task.reason else ""
                err.print(f"task {task_id} {task.state.value}{reason}", highlight=False)
                return
        time.sleep(FOLLOW_POLL)


@click.command()
@click.argument("task_id")
@click.argument("filename")
@click.option(
    "-o",
    "--output",
    "target",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Where to save it (default: FILENAME here; '-': standard output).",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.pass_obj
def fetch(obj: Context, task_id: str, filename: str, target: str | None, force: bool) -> None:
    """Save FILENAME, attached by TASK_ID, checking its sha256 on the way."""
    path = Path(target or filename)
    if target != "-" and path.exists() and not force:
        raise StateError(f"{path} exists; pass --force to replace it, or -o another path")
    with obj.service.open_attachment(task_id, filename) as opened:
        expected = opened.attachment.sha256
        if target == "-":
            digest = _copy(opened.file, sys.stdout.buffer)
            _check(digest, expected, filename)
            return
        partial = path.with_name(f".{path.name}.part")
        try:
            with partial.open("wb") as fh:
                digest = _copy(opened.file, fh)
            _check(digest, expected, filename)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    err.print(f"saved {filename} ({opened.attachment.size} bytes) to {path}", highlight=False)


def _copy(source: BinaryIO, target: BinaryIO) -> str:
    digest = hashlib.sha256()
    while data := source.read(COPY_SIZE):
        digest.update(data)
        target.write(data)
    target.flush()
    return digest.hexdigest()


def _check(digest: str, expected: str | None, filename: str) -> None:
    if expected is not None and digest != expected:
        raise StateError(
            f"{filename}: the stored file is damaged (sha256 {digest}, expected {expected})"
        )
