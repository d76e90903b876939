"""Pull-mode agents for real: the master's web server in this process (uvicorn on loopback),
the agent file it serves, run by the system's plain /usr/bin/python3 with an empty environment
from a folder of its own (no dirt importable there), inside a network namespace that reaches
the master through an outbound relay while nothing reaches it (tests/agents/outbound.py).
Without namespaces (not root, no iproute2) the agents run on loopback and the summary says so.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dirt.models import TokenScope
from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.run import WebServer
from tests.conftest import need, wait_for
from tests.ssh.sshd import _descendants, namespaces_possible

PYTHON = "/usr/bin/python3"
LEASE = 1.5  # seconds: short, so a lost agent is noticed within a test

SLEEPY = """\
import os
import time


def execute(seconds=0.0, fail=False):
    print("started on", os.environ.get("AGENT_LABEL"), flush=True)
    time.sleep(seconds)
    return {"success": not fail, "agent": os.environ.get("AGENT_LABEL")}
"""

_seen: dict[str, str] = {}
_namespaces = itertools.count(1)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if "loopback" in _seen:
        terminalreporter.write_line(
            f"agent tests: FALLBACK, no network namespaces ({_seen['loopback']}): agents "
            "reached the master on loopback",
            yellow=True,
        )
    elif _seen:
        terminalreporter.write_line(
            "agent tests: each agent ran in a network namespace the master cannot reach"
        )


@pytest.fixture
def settings_overrides() -> dict[str, dict[str, Any]]:
    return {"dispatch": {"poll_interval": 0.02}, "log": {"file": ""}, "agents": {"lease": LEASE}}


class Master:
    """The master's web server, in this process; it can be stopped and started again on its
    port (a master restart, as the agents see it)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.port = 0
        self.server: WebServer | None = None
        self.start()

    def start(self) -> None:
        app = create_app(self.service, bind_host="127.0.0.1")
        self.server = WebServer(app, "127.0.0.1", self.port)
        self.server.start()
        self.port = self.server.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
def master(service: Service, add_task_module: Callable[[str, str], str]) -> Iterator[Master]:
    add_task_module("agent.sleepy", SLEEPY)
    running = Master(service)
    yield running
    running.stop()


@pytest.fixture
def agent_token(service: Service) -> str:
    return service.create_token("agents", TokenScope.AGENT)


@pytest.fixture
def agent_file(master: Master, tmp_path: Path) -> Path:
    """agent.py as the master serves it, in a folder of its own."""
    folder = tmp_path / "host"
    folder.mkdir()
    path = folder / "agent.py"
    with urllib.request.urlopen(master.url + "agent.py", timeout=10) as answer:
        path.write_bytes(answer.read())
    return path


class Network:
    """Where agents run: in a namespace behind an outbound relay to the master's `port`, or on
    loopback. `scheme`: how the master speaks."""

    def __init__(self, port: int, isolated: bool, scheme: str = "http") -> None:
        self.port = port
        self.scheme = scheme
        self.outbound: Any = None
        if isolated:
            from tests.agents.outbound import Outbound

            self.outbound = Outbound(next(_namespaces), ("127.0.0.1", port))

    @property
    def url(self) -> str:
        port = self.outbound.port if self.outbound else self.port
        return f"{self.scheme}://127.0.0.1:{port}/"

    def command(self, *args: str) -> list[str]:
        return self.outbound.command(*args) if self.outbound else list(args)

    def close(self) -> None:
        if self.outbound:
            self.outbound.close()


def isolated() -> bool:
    """Whether agents get a namespace of their own here (noted for the summary)."""
    possible, why = namespaces_possible()
    if possible:
        _seen["isolated"] = "yes"
    else:
        _seen["loopback"] = why
    return possible


@pytest.fixture
def network(master: Master) -> Iterator[Network]:
    made = Network(master.port, isolated())
    yield made
    made.close()


class Agent:
    """One agent process, its log, and ways to end it."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 20) -> str:
        found = wait_for(lambda: re.search(pattern, self.log), timeout, what=f"{pattern!r} in log")
        return str(found.group(0))

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 20) -> int:
        return self.process.wait(timeout)

    def kill_all(self) -> None:
        """SIGKILL the agent, then everything it started (its fork server, its tasks), as a
        host that dies takes them all: the agent first, so it reports nothing of theirs."""
        started = _descendants(self.process.pid)
        for pid in [self.process.pid, *started]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


StartAgent = Callable[..., Agent]


@pytest.fixture
def start_agent(
    agent_file: Path, network: Network, agent_token: str, service: Service
) -> Iterator[StartAgent]:
    """Factory: start_agent(name, slots=1, *extra, env={}, token=None, url=None, wait=True,
    via=None) -> Agent, running; with `wait`, once the master knows it; `via`: another
    Network (to another master). Every agent is killed at teardown."""
    need(os.path.exists(PYTHON), PYTHON)
    started: list[Agent] = []

    def start(
        name: str,
        slots: int = 1,
        *extra: str,
        env: dict[str, str] | None = None,
        token: str | None = None,
        url: str | None = None,
        wait: bool = True,
        via: Network | None = None,
    ) -> Agent:
        variables = [f"{k}={v}" for k, v in {"AGENT_LABEL": name, **(env or {})}.items()]
        net = via or network
        command = net.command(
            "env", "-i", *variables, PYTHON, str(agent_file), url or net.url,
            "--token", token or agent_token, "--name", name, "--slots", str(slots), *extra,
        )  # fmt: skip
        log = agent_file.parent / f"{name}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                command,
                cwd=agent_file.parent,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
        agent = Agent(name, process, log)
        started.append(agent)
        if wait:
            agent.wait_log(f"registered with .* as agent {re.escape(name)}")
        return agent

    yield start
    for agent in started:
        agent.kill_all()


def submit(service: Service, *kwargs: dict[str, Any], **options: Any) -> list[str]:
    """One record with an agent.sleepy task per kwargs; returns the task ids."""
    docs: list[dict[str, Any]] = [{"_id": f"r{time.monotonic_ns()}", "type": "record"}]
    record = docs[0]["_id"]
    for one in kwargs:
        docs.append(
            {"type": "task", "record_id": record, "name": "agent.sleepy", "kwargs": one, **options}
        )
    return [t.id for t in service.submit(docs).tasks]
