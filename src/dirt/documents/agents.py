"""What pull-mode agents send (dirt.web.agent_api): registrations, requests for work, job
reports and chunk ranges -> plain values, or InputError listing every problem. Nothing reaches
the service before it passes here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dirt.errors import InputError
from dirt.remote.http_client import AGENT_PROTOCOL  # the agent API's version: one definition
from dirt.remote.protocol import OUTCOME_FIELDS

MAX_NAME = 200
MAX_SLOTS = 1024
MAX_WAIT = 60.0  # seconds a request for work may ask to be held
# Jobs an agent may hold beyond its slots, queued for the next slot that frees (so that a freed
# slot never waits for a round trip to the master).
MAX_PREFETCH = 4
MAX_TOKEN = 200
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
RESERVED = frozenset({"local", "localhost"})
STATES = ("running", "finished", "abandoned")
_RANGE = re.compile(r"^bytes (\d{1,18})-(\d{1,18})/(\d{1,18}|\*)$")
# What an outcome carries over HTTP: OUTCOME_FIELDS but the output, which is PATCHed.
OUTCOME_KEYS = tuple(name for name in OUTCOME_FIELDS if name != "output")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _raise(problems: list[str], what: str) -> None:
    if problems:
        raise InputError(f"{what} refused, nothing was stored: " + "; ".join(problems))


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InputError(f"{what} refused: the body must be a JSON object")
    return body


def _unknown(body: dict[str, Any], known: tuple[str, ...], problems: list[str]) -> None:
    extra = sorted(set(body) - set(known))
    if extra:
        named = ", ".join(map(repr, extra))
        problems.append(f"unknown field(s) {named} (known: {', '.join(known)})")


def agent_name(value: Any) -> str:
    """A valid agent node name (a host name: letters, digits, '.', '-', '_'), or InputError."""
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME
        or not NAME.match(value)
        or value.lower() in RESERVED
    ):
        raise InputError(
            f"agent name {str(value)[:80]!r} must be 1-{MAX_NAME} letters, digits, '.', '-' or "
            "'_', starting with a letter or digit, and not 'local'"
        )
    return value


@dataclass(frozen=True)
class Registration:
    name: str
    slots: int
    sys_info: dict[str, Any]


def registration(body: Any) -> Registration:
    """`POST /api/agent/register`: {"name", "slots", "sys_info", "protocol"}."""
    data = _object(body, "registration")
    problems: list[str] = []
    _unknown(data, ("name", "slots", "sys_info", "protocol"), problems)
    if data.get("protocol") != AGENT_PROTOCOL:
        problems.append(
            f"this master speaks agent protocol {AGENT_PROTOCOL}, the agent "
            f"{data.get('protocol')!r}: fetch agent.py again from this master"
        )
    name = ""
    try:
        name = agent_name(data.get("name"))
    except InputError as exc:
        problems.append(str(exc))
    slots = data.get("slots")
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS:
        problems.append(f"'slots' must be an integer from 1 to {MAX_SLOTS}, not {slots!r}")
    sys_info = data.get("sys_info")
    if not isinstance(sys_info, dict):
        problems.append("'sys_info' must be an object (the agent's probe of its host)")
    else:
        if not isinstance(sys_info.get("platform"), str):
            problems.append("'sys_info.platform' must be a string")
        if not _is_int(sys_info.get("cpu_count")) and sys_info.get("cpu_count") is not None:
            problems.append("'sys_info.cpu_count' must be an integer")
        if not isinstance(sys_info.get("environ", {}), dict):
            problems.append("'sys_info.environ' must be an object")
    _raise(problems, "registration")
    assert isinstance(slots, int) and isinstance(sys_info, dict)
    return Registration(name, slots, sys_info)


@dataclass(frozen=True)
class WorkRequest:
    node: str
    wait: float
    prefetch: int = 0  # jobs the agent queues beyond its slots


def work_request(body: Any) -> WorkRequest:
    """`POST /api/agent/jobs/request`: {"node", "wait", "prefetch"}; wait is at most MAX_WAIT
    seconds; prefetch (default 0), the jobs the agent queues beyond its slots, at most
    MAX_PREFETCH."""
    data = _object(body, "request for work")
    problems: list[str] = []
    _unknown(data, ("node", "wait", "prefetch"), problems)
    node = ""
    try:
        node = agent_name(data.get("node"))
    except InputError as exc:
        problems.append(str(exc))
    wait = data.get("wait", 0)
    if not _is_number(wait) or not 0 <= wait <= MAX_WAIT:
        problems.append(f"'wait' must be a number of seconds from 0 to {MAX_WAIT:g}")
    prefetch = _prefetch(data, problems)
    _raise(problems, "request for work")
    return WorkRequest(node, float(wait), prefetch)


def _prefetch(data: dict[str, Any], problems: list[str]) -> int:
    prefetch = data.get("prefetch", 0)
    if not _is_int(prefetch) or not 0 <= prefetch <= MAX_PREFETCH:
        problems.append(f"'prefetch' must be a whole number of jobs from 0 to {MAX_PREFETCH}")
        return 0
    return int(prefetch)


@dataclass(frozen=True)
class JobReport:
    """A PUT on a job: a heartbeat ("running"), its end ("finished", with `outcome` in
    protocol.OUTCOME_FIELDS order, output empty: it was PATCHed; with `next`, the answer
    brings the agent's next job, counting `prefetch` jobs queued beyond its slots), or
    "abandoned" (the agent stops: the task waits again). A heartbeat with `queued` is of a job
    waiting on the agent for a slot: its timeout has not begun; with `hold`, its answer may be
    held up to that many seconds, and comes at once when someone cancels the task."""

    state: str
    outcome: tuple[Any, ...] | None = None
    reason: str = ""
    next: bool = False  # with "finished": answer with the agent's next job, if there is one
    prefetch: int = 0  # with `next`: jobs the agent queues beyond its slots
    queued: bool = False  # with "running": the job waits on the agent for a free slot
    hold: float = 0.0  # with "running": seconds the answer may wait for a cancel


def job_report(body: Any) -> JobReport:
    data = _object(body, "job report")
    problems: list[str] = []
    known = ("state", "outcome", "reason", "next", "prefetch", "queued", "hold")
    _unknown(data, known, problems)
    state = data.get("state")
    if state not in STATES:
        problems.append(f"'state' must be one of {', '.join(STATES)}, not {state!r}")
    reason = data.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 2000:
        problems.append("'reason' must be a string of at most 2000 characters")
    outcome = None
    if state == "finished":
        outcome = _outcome(data.get("outcome"), problems)
    elif "outcome" in data:
        problems.append(f"a report of state {state!r} carries no 'outcome'")
    take_next = data.get("next", False)
    if not isinstance(take_next, bool) or (take_next and state != "finished"):
        problems.append("'next' is true or false, and true only with state 'finished'")
    prefetch = _prefetch(data, problems)
    if prefetch and take_next is not True:
        problems.append("'prefetch' goes with 'next': true")
    queued = data.get("queued", False)
    if not isinstance(queued, bool) or (queued and state != "running"):
        problems.append("'queued' is true or false, and true only with state 'running'")
    hold = data.get("hold", 0)
    if not _is_number(hold) or not 0 <= hold <= MAX_WAIT or (hold and state != "running"):
        problems.append(
            f"'hold' is a number of seconds from 0 to {MAX_WAIT:g}, only with state 'running'"
        )
    _raise(problems, "job report")
    return JobReport(
        str(state), outcome, str(reason), bool(take_next), prefetch, queued, float(hold)
    )


def _outcome(value: Any, problems: list[str]) -> tuple[Any, ...] | None:
    if not isinstance(value, dict):
        problems.append("'outcome' must be an object with " + ", ".join(OUTCOME_KEYS))
        return None
    _unknown(value, OUTCOME_KEYS, problems)
    checks: dict[str, Callable[[Any], bool]] = {
        "error": lambda v: v is None or isinstance(v, str),
        "exit_code": lambda v: v is None or _is_int(v),
        "signal": lambda v: v is None or (_is_int(v) and 0 < v < 256),
        "timed_out": lambda v: isinstance(v, bool),
        "killed": lambda v: isinstance(v, bool),
        "duration": lambda v: _is_number(v) and v >= 0,
    }
    for key, valid in checks.items():
        if not valid(value.get(key, None if key in ("error", "exit_code", "signal") else False)):
            problems.append(f"'outcome.{key}' has the wrong type: {str(value.get(key))[:60]!r}")
    return (*(value.get(name) for name in OUTCOME_KEYS), b"")


def content_range(header: str | None, size: int) -> int:
    """The start of a chunk of `size` bytes from its `Content-Range: bytes START-END/*`
    (END inclusive, as HTTP has it), or InputError."""
    found = _RANGE.match(header or "")
    if found is None:
        raise InputError(
            "a chunk needs 'Content-Range: bytes START-END/*' (END inclusive), not "
            f"{str(header)[:80]!r}"
        )
    start, end = int(found.group(1)), int(found.group(2))
    if size == 0:
        raise InputError("an empty chunk: send at least one byte")
    if end - start + 1 != size:
        raise InputError(
            f"Content-Range {header!r} names {end - start + 1} bytes, the body has {size}"
        )
    return start


def job_token(value: Any) -> str:
    """The `Job-Token` header's value, or InputError (which the API answers with 401)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN:
        raise InputError("send the job's token in the 'Job-Token' header")
    return value
