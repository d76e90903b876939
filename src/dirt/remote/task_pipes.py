"""One task's pipes under process isolation, and what was read from them (process_runner.py).

Stdlib only; shipped in the agent's source before process_runner.py (see ``dirt.remote.source``).
"""

from __future__ import annotations

import os
from typing import Any

from dirt.remote.protocol import FrameDecoder, RunRequest, outcome, signal_name
from dirt.remote.streams import OutputBuffer


def marked_processes(cookie: str) -> set[int]:
    """Pids of the processes whose environment holds `cookie` ("NAME=value"), from /proc
    (Linux; elsewhere none are found)."""
    marker = cookie.encode() + b"\0"
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker in fh.read():
                    found.add(int(entry))
        except OSError:
            continue
    return found


class TaskPipes:
    """One task's pipes and what was read from them, from its RUN until it is reported."""

    __slots__ = (
        "decoder",
        "error",
        "got_results",
        "out_fd",
        "output",
        "paused",
        "pid",
        "res_fd",
        "results",
        "task_id",
        "timeout",
    )

    def __init__(self, request: RunRequest, out_fd: int, res_fd: int, output_limit: int) -> None:
        self.task_id = request.task_id
        self.timeout = request.timeout or 0.0
        self.out_fd = out_fd
        self.res_fd = res_fd
        self.output = OutputBuffer(output_limit)
        self.decoder = FrameDecoder()
        self.results: Any = None
        self.error: str | None = None
        self.got_results = False
        self.paused = False
        self.pid: int | None = None  # once the fork server names it (STARTED)

    def outcome(
        self, status: int, timed_out: bool, killed: bool, duration: float, output: bytes
    ) -> tuple[Any, ...]:
        """The outcome of the task's process, which ended with wait status `status`."""
        exit_code: int | None = os.waitstatus_to_exitcode(status)
        sig = None
        if exit_code is not None and exit_code < 0:
            sig, exit_code = -exit_code, None
        results, error = self.results, self.error
        if self.decoder.pending and error is None and not self.got_results:
            error = "task result unreadable: the task process ended in the middle of it"
        if timed_out:
            error, results = f"task timed out after {self.timeout:g}s and was killed", None
        elif killed:
            error, results = "task was killed on request", None
        elif not self.got_results and error is None:
            if sig is not None:
                error = f"task process died from signal {sig} ({signal_name(sig)}) without results"
            else:
                error = f"task process exited with code {exit_code} without results"
        return outcome(
            results=results,
            error=error,
            exit_code=exit_code,
            signal=sig,
            timed_out=timed_out,
            killed=killed,
            duration=duration,
            output=output,
        )
