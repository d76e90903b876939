"""Batch-system commands run on a login host over the same execnet connection machinery SSH
nodes use (`slurm:PARTITION@LOGIN_HOST`): one gateway per login host, kept open, and a small
stdlib program on it that runs each argv with subprocess."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from dirt.batch import BatchUnavailableError
from dirt.batch.commands import DEFAULT_TIMEOUT, CommandResult, LocalRunner
from dirt.config import NodeDefaults

# Shipped to the login host: runs one command per message, answers (rc, stdout, stderr).
_COMMAND_SERVER = """
import os, subprocess
if __name__ == '__channelexec__':
    for argv, stdin, timeout in channel:
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            channel.send((done.returncode, done.stdout, done.stderr, None))
        except FileNotFoundError:
            channel.send((127, "", "", argv[0] + " is not installed on the login host"))
        except subprocess.TimeoutExpired:
            channel.send((124, "", "", argv[0] + " did not answer in time"))
        except OSError as exc:
            channel.send((126, "", "", argv[0] + " could not be run: " + str(exc)))
"""


class ExecnetRunner:
    """Runs commands on `login_host` (`[user@]host[:port]`, or `local`: a local process)."""

    def __init__(
        self, login_host: str, defaults: NodeDefaults, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.login_host = login_host
        self.defaults = defaults
        self.timeout = timeout
        self._lock = threading.Lock()
        self._gateway: Any = None
        self._channel: Any = None

    def _open(self) -> Any:
        from dirt.dispatch.runner import ClosingGroup, node_options, spec_for
        from dirt.documents import parse_address

        options = node_options(self.defaults, None, self.login_host)
        spec = spec_for(parse_address(self.login_host), options)
        try:
            self._gateway = ClosingGroup().makegateway(spec)
            self._channel = self._gateway.remote_exec(_COMMAND_SERVER)
        except Exception as exc:
            self.close()
            raise BatchUnavailableError(f"login host {self.login_host}: {exc}") from None
        return self._channel

    def run(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        if not argv:
            raise ValueError("empty command")
        with self._lock:
            channel = self._channel or self._open()
            try:
                channel.send((list(argv), stdin, self.timeout))
                rc, out, err, failure = channel.receive(self.timeout + 10)
            except Exception as exc:
                self.close()
                raise BatchUnavailableError(
                    f"login host {self.login_host}: connection lost ({exc})"
                ) from None
        if failure is not None:
            raise BatchUnavailableError(f"login host {self.login_host}: {failure}")
        return CommandResult(rc, out, err)

    def close(self) -> None:
        gateway, self._gateway, self._channel = self._gateway, None, None
        if gateway is not None:
            with contextlib.suppress(Exception):
                gateway.exit()


def runner_for(login_host: str | None, defaults: NodeDefaults) -> LocalRunner | ExecnetRunner:
    """Where a batch node's commands run: here, or on its login host."""
    return ExecnetRunner(login_host, defaults) if login_host else LocalRunner()
