"""Judging what a node sent back: every kind of outcome gets a state and a reason to act on."""

from __future__ import annotations

from typing import Any

import pytest

from dirt.dispatch.connection import Outcome
from dirt.dispatch.outcome import judge
from dirt.models import TaskState


def outcome(**fields: Any) -> Outcome:
    values: dict[str, Any] = {
        "results": None,
        "error": None,
        "exit_code": None,
        "signal": None,
        "timed_out": False,
        "killed": False,
        "duration": 0.1,
        "output": "",
    }
    values.update(fields)
    return Outcome(task_id="t1", **values)


def test_results_with_success_true_succeed_and_are_kept() -> None:
    verdict = judge(outcome(results={"success": True, "n": 3}), "m", None)
    assert verdict.state is TaskState.SUCCEEDED
    assert verdict.results == {"success": True, "n": 3}
    assert verdict.reason is None and verdict.attachments == []


def test_attachments_are_split_from_the_results_and_linked() -> None:
    results = {
        "success": True,
        "attachments": [{"filename": "log.txt", "contents": "ok\n", "link_name": "Log"}],
    }
    verdict = judge(outcome(results=results), "m", None)
    assert verdict.state is TaskState.SUCCEEDED
    assert verdict.results == {
        "success": True,
        "attachments": [{"filename": "log.txt", "link_name": "Log", "size": 3}],
    }
    (attachment,) = verdict.attachments
    assert (attachment.task_id, attachment.filename, attachment.content) == (
        "t1",
        "log.txt",
        b"ok\n",
    )


def test_success_false_fails_with_the_tasks_own_reason() -> None:
    verdict = judge(outcome(results={"success": False, "reason": "3 tests failed"}), "m", None)
    assert verdict.state is TaskState.FAILED
    assert verdict.reason == "3 tests failed"
    assert verdict.results == {"success": False, "reason": "3 tests failed"}


def test_success_false_without_a_reason_says_so() -> None:
    verdict = judge(outcome(results={"success": False}), "m", None)
    assert (verdict.state, verdict.reason) == (TaskState.FAILED, "task reported success: false")


def test_a_reason_that_is_not_a_string_is_shown_as_text() -> None:
    verdict = judge(outcome(results={"success": False, "reason": 42}), "m", None)
    assert verdict.reason == "42"


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        (42, "task returned 42; expected a dict with a boolean 'success'"),
        ({"success": "yes"}, "expected a dict with a boolean 'success'"),
        ({"success": True, "attachments": "log"}, "'attachments' must be a list"),
        ({"success": True, "x": float("nan")}, "results not JSON-serialisable"),
    ],
)
def test_malformed_results_fail_with_what_is_wrong(results: Any, expected: str) -> None:
    verdict = judge(outcome(results=results), "m", None)
    assert verdict.state is TaskState.FAILED and verdict.results is None
    assert expected in (verdict.reason or "")


def test_an_error_from_the_node_fails_the_task_with_that_error() -> None:
    verdict = judge(outcome(error="Traceback ...\nValueError: no disk"), "m", None)
    assert (verdict.state, verdict.reason) == (
        TaskState.FAILED,
        "Traceback ...\nValueError: no disk",
    )


def test_a_killed_task_is_cancelled() -> None:
    verdict = judge(outcome(killed=True, error="killed on request", signal=9), "m", None)
    assert verdict.state is TaskState.CANCELLED
    assert verdict.reason == "cancelled while running; its process was killed"


@pytest.mark.parametrize(("timeout", "shown"), [(2.0, "2"), (1.5, "1.5"), (None, "?")])
def test_a_timed_out_task_fails_naming_the_timeout(timeout: float | None, shown: str) -> None:
    verdict = judge(outcome(timed_out=True, error="timed out", signal=9), "m", timeout)
    assert (verdict.state, verdict.reason) == (TaskState.FAILED, f"timed out after {shown} s")


def test_sigkill_from_outside_hints_at_memory() -> None:
    verdict = judge(outcome(signal=9), "m", None)
    assert verdict.state is TaskState.FAILED
    assert verdict.reason == (
        "task process killed by SIGKILL (signal 9) (out of memory, or killed from outside) "
        "before sending results"
    )


def test_another_signal_is_named_without_the_hint() -> None:
    verdict = judge(outcome(signal=15), "m", None)
    assert verdict.reason == "task process killed by SIGTERM (signal 15) before sending results"


def test_an_exit_without_results_fails_with_the_exit_code() -> None:
    verdict = judge(outcome(exit_code=3), "m", None)
    assert verdict.reason == "task process exited with code 3 before sending results"


def test_no_results_and_no_cause_names_the_module() -> None:
    verdict = judge(outcome(), "examples.quiet", None)
    assert verdict.reason == "task module examples.quiet sent no results"


def test_killed_wins_over_timed_out_and_timed_out_over_the_error() -> None:
    assert judge(outcome(killed=True, timed_out=True), "m", 1).state is TaskState.CANCELLED
    verdict = judge(outcome(timed_out=True, error="boom"), "m", 1)
    assert verdict.reason == "timed out after 1 s"
