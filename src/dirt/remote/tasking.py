"""What the agent (thread isolation) and the fork server (process isolation) share: how a task
module is compiled and run, and how a finished task's process group is killed.

Stdlib only. Shipped after ``protocol.py`` in the agent's and the fork server's source (see
``dirt.remote.source``), which drops the imports of its sibling modules. Every module imported
here is loaded in the fork server, whose every fork copies what it has loaded: ``traceback`` is
imported only when a task fails.
"""

from __future__ import annotations

import builtins
import os

from dirt.remote.protocol import TYPE_CHECKING

if TYPE_CHECKING:
    import signal
    from types import CodeType
    from typing import Any
else:
    import _signal as signal  # the same functions, without signal.py's enums


class TaskChannel:
    """Stands in for the execnet channel an original-style task module talks to."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self._kwargs = kwargs
        self.sent = False
        self.results: Any = None

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        return self._kwargs

    def send(self, obj: Any) -> None:
        # The first send is the task's answer; later ones are ignored, as the master would
        # only ever have read one.
        if not self.sent:
            self.sent = True
            self.results = obj

    def isclosed(self) -> bool:
        return False

    def close(self, error: object = None) -> None:
        pass


def run_task(
    code: CodeType, module_name: str, kwargs: dict[str, Any] | None
) -> tuple[Any, str | None]:
    """Run one task module; return (results, error)."""
    chan = TaskChannel(kwargs if kwargs is not None else {})
    namespace = {
        "__name__": "__channelexec__",
        "__file__": f"<dirt task {module_name}>",
        "__builtins__": builtins,
        "channel": chan,
    }
    try:
        exec(code, namespace)
        if chan.sent:
            return chan.results, None
        execute = namespace.get("execute")
        if callable(execute):
            return execute(**chan._kwargs), None
        return None, f"task module {module_name} sent no results and defines no execute()"
    except SystemExit as exc:
        return None, f"task called sys.exit({exc.code!r})"
    except BaseException:
        return None, format_exc()


def format_exc() -> str:
    """The current exception's traceback, as ``traceback.format_exc`` makes it."""
    import traceback

    return traceback.format_exc()


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (or `pid` alone if it leads none)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        try:  # noqa: SIM105  (contextlib is one more module in the fork server)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    except PermissionError:
        pass


class TaskCodes:
    """Task modules compiled once per process, by sha256 (the master sends a source once).

    A module is compiled from its bytes, so its PEP 263 coding line (``# -*- coding: latin-1
    -*-``) is honoured, as when Python imports it.
    """

    def __init__(self, owner: str) -> None:
        self._owner = owner  # who says "no source", e.g. "agent"
        self._codes: dict[str, CodeType] = {}

    def get(
        self, sha: str, module_name: str, source: bytes | str | None, path: str = ""
    ) -> tuple[CodeType | None, str | None]:
        """(code, None), or (None, why not) when the source is missing or does not compile;
        `path` names the module's file in that message."""
        code = self._codes.get(sha)
        if code is not None:
            return code, None
        if source is None:
            return None, f"{self._owner} has no source for {sha}"
        try:
            code = compile(source, f"<dirt task {module_name}>", "exec")
        except BaseException as exc:
            import traceback

            where = f"{module_name} ({path})" if path else module_name
            detail = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
            return None, f"task module {where} does not compile:\n{detail}"
        self._codes[sha] = code
        return code, None
