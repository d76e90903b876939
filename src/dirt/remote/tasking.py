"""What the agent (thread isolation) and the fork server (process isolation) share: how a task
module is run, and how a finished task's process group is killed.

Stdlib only. Never imported on a node: ``dirt.remote.source()`` puts this text in front of the
agent's and the fork server's own source when it ships them, so both define these names.
"""

import builtins
import contextlib
import os
import signal
import struct
import traceback

OUTPUT_TAIL = 64 * 1024
HEADER = struct.Struct("!I")
PLAIN_TYPES = (type(None), bool, int, float, str, bytes)


class TaskChannel:
    """Stands in for the execnet channel an original-style task module talks to."""

    def __init__(self, kwargs):
        self._kwargs = kwargs
        self.sent = False
        self.results = None

    def receive(self, timeout=None):
        return self._kwargs

    def send(self, obj):
        # The first send is the task's answer; later ones are ignored, as the master would
        # only ever have read one.
        if not self.sent:
            self.sent = True
            self.results = obj

    def isclosed(self):
        return False

    def close(self, error=None):
        pass


def unserialisable_type(obj):
    """Name the first type inside obj that a plain-data transport cannot carry, else None."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, PLAIN_TYPES):
            continue
        if type(item) in (list, tuple):
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            return type(item).__name__
    return None


def run_task(code, module_name, kwargs):
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
        return None, traceback.format_exc()


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    except PermissionError:
        pass
