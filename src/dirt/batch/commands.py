"""How batch-system commands are run: one small interface, a local implementation.

The Slurm functions call `runner.run(argv, stdin)` and read `(rc, stdout, stderr)`. Here that is
a subprocess on this machine; for `slurm:PARTITION@LOGIN_HOST` it is the same argv run on the
login host over the node's SSH connection. A runner raises BatchUnavailableError when the
command could not be run at all (not installed, timed out, connection lost); a command that ran
and failed returns its exit status for the caller to read.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from dirt.batch import BatchUnavailableError

DEFAULT_TIMEOUT = 60.0


class CommandResult(NamedTuple):
    rc: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one command (no shell) and returns its exit status and output."""

    def run(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult: ...


@dataclass(frozen=True)
class LocalRunner:
    """Runs commands on this machine; `env` is added to this process's environment."""

    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT

    def run(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        if not argv:
            raise ValueError("empty command")
        try:
            done = subprocess.run(
                list(argv),
                input=stdin,
                capture_output=True,
                text=True,
                env={**os.environ, **self.env} if self.env else None,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise BatchUnavailableError(
                f"{argv[0]} is not installed on this machine (not found on PATH)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise BatchUnavailableError(
                f"{argv[0]} did not answer within {self.timeout:g} s"
            ) from exc
        except OSError as exc:
            raise BatchUnavailableError(f"{argv[0]} could not be run: {exc}") from exc
        return CommandResult(done.returncode, done.stdout, done.stderr)
