"""Turn what a node sent back for a task into the state, results and reason to store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from dirt.dispatch.connection import Outcome
from dirt.documents import ResultError, parse_results
from dirt.models import Attachment, TaskState
from dirt.remote.protocol import signal_name


@dataclass
class Verdict:
    state: TaskState
    results: dict[str, Any] | None
    reason: str | None
    attachments: list[Attachment] = field(default_factory=list)


def judge(outcome: Outcome, module_name: str, timeout: float | None) -> Verdict:
    """The verdict on one run; every failure gets a reason a user can act on."""
    if outcome.killed:
        return Verdict(TaskState.CANCELLED, None, "cancelled while running; its process was killed")
    if outcome.timed_out:
        return Verdict(TaskState.FAILED, None, f"timed out after {_seconds(timeout)} s")
    if outcome.error:
        return Verdict(TaskState.FAILED, None, outcome.error)
    if outcome.signal is not None:
        hint = " (out of memory, or killed from outside)" if outcome.signal == 9 else ""
        return Verdict(
            TaskState.FAILED,
            None,
            f"task process killed by {signal_name(outcome.signal)} (signal {outcome.signal})"
            f"{hint} before sending results",
        )
    if outcome.results is None:
        if outcome.exit_code is not None:
            return Verdict(
                TaskState.FAILED,
                None,
                f"task process exited with code {outcome.exit_code} before sending results",
            )
        return Verdict(TaskState.FAILED, None, f"task module {module_name} sent no results")
    try:
        results, attachments = parse_results(outcome.task_id, outcome.results, time.time())
    except ResultError as exc:
        return Verdict(TaskState.FAILED, None, str(exc))
    if results["success"]:
        return Verdict(TaskState.SUCCEEDED, results, None, attachments)
    reason = results.get("reason")
    return Verdict(
        TaskState.FAILED,
        results,
        str(reason) if reason is not None else "task reported success: false",
        attachments,
    )


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
