"""Helpers for the tests of several masters: local nodes told apart by a `pin`, and a task that
records on the node when it ran, so concurrency is measured where the tasks run."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from dirt.config import NodeDefaults
from dirt.service import Service
from tests.conftest import DIRT

# Runs `seconds`, noting in MARKS/PIN when it started, that it is alive (every 50 ms) and when
# it ended: a run killed from outside leaves its last "alive" as its end.
MARK_TASK = """\
import os, threading, time, uuid

def execute(pin, marks, seconds=0.3):
    path = os.path.join(marks, pin)
    run = uuid.uuid4().hex

    def note(kind):
        with open(path, "a") as out:
            out.write(f"{kind} {run} {time.time()!r}\\n")

    note("start")
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(min(0.05, max(0.0, end - time.time())))
        note("alive")
    note("end")
    return {"success": True}
"""


@functools.cache
def local_info() -> dict[str, Any]:
    from dirt.dispatch.runner import probe

    return probe("local", NodeDefaults())


def addresses(count: int) -> list[str]:
    return ["local"] + [f"local-{i}" for i in range(1, count)]


def add_nodes(service: Service, count: int, slots: int = 2) -> list[str]:
    """`count` local nodes (local, local-1, ...), each with `pin` = its address in sys_info, so
    a task can be sent to one node with `requires: ["pin is ADDRESS"]`."""
    found = addresses(count)
    for address in found:
        service.save_node(address, {**local_info(), "pin": address}, slots=slots)
    return found


def mark_tasks(
    service: Service, record: str, pins: list[str], per_pin: int, marks: Path, seconds: float
) -> list[str]:
    docs: list[dict[str, Any]] = [{"_id": record, "type": "record"}]
    docs += [
        {
            "type": "task",
            "record_id": record,
            "name": "mark",
            "kwargs": {"pin": pin, "marks": str(marks), "seconds": seconds},
            "requires": [f"pin is {pin}"],
        }
        for _ in range(per_pin)
        for pin in pins
    ]
    return [t.id for t in service.submit(docs).tasks]


def most_at_once(marks: Path, pin: str) -> int:
    """The most runs noted on node `pin` at one moment."""
    spans: dict[str, list[float]] = {}
    path = marks / pin
    if not path.exists():
        return 0
    for line in path.read_text().splitlines():
        _kind, run, when = line.split()
        span = spans.setdefault(run, [float(when), float(when)])
        span[0], span[1] = min(span[0], float(when)), max(span[1], float(when))
    events = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def shares(service: Service) -> list[int]:
    """How many nodes each live dispatcher drives, smallest first."""
    return sorted(len(d.nodes) for d in service.dispatchers() if d.live)


class Master:
    """`dirt serve --no-web` in a process of its own; with `own_machine`, in a pid namespace of
    its own (unshare), which to the other masters is another machine: its death is known only
    when its lease runs out, as for a master on another host."""

    def __init__(self, project: Path, env: dict[str, str], name: str, own_machine: bool = False):
        command = [DIRT, "serve", "--no-web"]
        if own_machine:
            command = ["unshare", "--pid", "--fork", "--kill-child", *command]
        self.name = name
        self.out = project / f"{name}.out"
        with self.out.open("w") as out:
            self.process = subprocess.Popen(
                command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.own_machine = own_machine

    @property
    def pid(self) -> int:
        """The pid of `dirt serve` itself (under unshare: its child, pid 1 of its namespace)."""
        if not self.own_machine:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found = children.read_text().split()
        assert found, f"{self.name}: no dirt serve under unshare"
        return int(found[0])

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def id(self) -> str | None:
        """Its master id, once it said it (its pid in it is 1 under unshare)."""
        found = re.search(r"dispatcher (\S+) serving project", self.output())
        return found.group(1) if found else None

    def kill(self) -> None:
        """kill -9: under unshare, its namespace's pid 1 (so every process in it dies)."""
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait(30)

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, AssertionError, OSError):
                os.kill(self.pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait(30)


def master_env(database_url: str, **dispatch: Any) -> dict[str, str]:
    """The environment of a `dirt serve` on `database_url`, [dispatch] keys as given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRT_")}
    env["DIRT_DATABASE_URL"] = database_url
    env["DIRT_LOG_FILE"] = ""
    for key, value in dispatch.items():
        env[f"DIRT_DISPATCH_{key.upper()}"] = str(value)
    return env
