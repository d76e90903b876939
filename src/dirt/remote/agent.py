"""Node agent: runs every task the master sends over one execnet channel.

Shipped as source text with ``gateway.remote_exec``; stdlib only. ``dirt.remote.source()``
ships it after protocol.py, tasking.py, process_runner.py and thread_runner.py and drops the
imports between them. The master keeps one gateway per node and one agent channel on it,
multiplexed for all tasks; the messages are in ``protocol.py``. Tasks run in children of a
warm fork server ("process" isolation, process_runner.py) or in threads of this process
("thread" isolation, thread_runner.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from typing import Any

from dirt.remote.process_runner import ProcessRunner
from dirt.remote.protocol import (
    DONE,
    FATAL,
    KILL,
    LOAD,
    READY,
    RUN,
    STOP,
    python_too_old,
    run_request,
    unserialisable_type,
    without_results,
)
from dirt.remote.thread_runner import ThreadRunner


class Sender:
    """Serialises sends on the agent channel; task outcomes come from many threads."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.lock:
            self.channel.send(message)

    def done(self, task_id: str, wire: tuple[Any, ...]) -> None:
        """Report a finished task (`wire` from ``protocol.outcome``)."""
        try:
            self.send((DONE, task_id, wire))
        except Exception as exc:
            if self.channel.isclosed():
                return
            # Most likely execnet could not serialise the results; the task still finished.
            name = unserialisable_type(wire[0]) or type(exc).__name__
            with contextlib.suppress(Exception):
                self.send(
                    (DONE, task_id, without_results(wire, f"results not serialisable: {name}"))
                )


def start_runner(config: dict[str, Any], sender: Sender) -> ProcessRunner | ThreadRunner:
    """The runner the master's config asks for; raises (with a reason) when it cannot start."""
    too_old = python_too_old(sys.executable, sys.version_info[:2])
    if too_old is not None:
        raise RuntimeError(too_old)
    isolation = config.get("isolation", "process")
    if isolation == "process":
        return ProcessRunner(config, sender.done)
    if isolation == "thread":
        return ThreadRunner(sender.done)
    raise ValueError(f"unknown isolation {isolation!r} (use 'process' or 'thread')")


def serve(channel: Any) -> None:
    sender = Sender(channel)
    try:
        config = channel.receive()
        runner = start_runner(config, sender)
    except Exception as exc:
        sender.send((FATAL, f"agent could not start: {exc}"))
        return
    isolation = "process" if isinstance(runner, ProcessRunner) else "thread"
    finished = threading.Event()
    failures: list[str] = []
    closed = object()

    def on_message(message: Any) -> None:
        # Runs in execnet's receiver thread: one hand-off fewer per task than a receive loop.
        if finished.is_set():
            return
        if message is closed:
            # The master closed the channel or went away: stop like on STOP.
            finished.set()
            return
        try:
            kind = message[0]
            if kind == RUN:
                runner.run(run_request(message))
            elif kind == KILL:
                runner.kill(message[1])
            elif kind == LOAD:
                sender.send((LOAD, list(os.getloadavg()), runner.running()))
            elif kind == STOP:
                finished.set()
        except Exception:
            failures.append(traceback.format_exc())
            finished.set()

    sender.send((READY, {"pid": os.getpid(), "isolation": isolation, "python": sys.executable}))
    channel.setcallback(on_message, endmarker=closed)
    finished.wait()
    runner.stop()
    if failures:
        sender.send((FATAL, "agent failed:\n" + failures[0]))


if __name__ == "__channelexec__":
    serve(channel)  # type: ignore[name-defined]  # noqa: F821
