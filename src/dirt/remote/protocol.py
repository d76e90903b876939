"""The wire protocol between the master, the node agent and the fork server: its one definition.

Stdlib only, runs on ``PYTHON_FLOOR`` and newer. The master imports it (``dirt.dispatch``);
``dirt.remote.source()`` ships this text first in the agent's and the fork server's source.

Every message is a tuple whose first item is its kind. Bulk data (a task's output, its
attachments) travels in chunks of at most ``CHUNK_SIZE`` bytes, each a message of its own, so
that chunks of different tasks take turns on a link (``streams.FairQueue``) and no process has to
hold a whole output or attachment. Three links carry them:

master <-> agent, one execnet channel per node (execnet serialises; plain data only, see
``unserialisable_type``). First the master sends the config ``{"isolation": "process"|"thread",
"forkserver_source": bytes, "output_limit": int, "attachment_limit": int}``, then any of:
    (RUN, *RunRequest)         a task to start: see ``RunRequest``
    (KILL, task_id)
    (LOAD,)
    (STOP,)
and the agent answers with:
    (READY, {"pid": int, "isolation": str, "python": str})    once, after the config
    (OUTPUT, task_id, offset, data)     bytes the task wrote to stdout or stderr, from `offset`
                                        in its whole output; chunks never overlap, but beyond
                                        the head they may leave gaps (bytes dropped over the
                                        output limit) and, when the task ends, fill in earlier
                                        ones (see ``streams.OutputBuffer``)
    (BLOB, task_id, index, data)        the next chunk of attachment `index` of the results
    (DONE, task_id, outcome)            see ``outcome()``; after all the task's OUTPUT and BLOB
    (LOAD, [l1, l5, l15], running_count)
    (FATAL, message)                    then the agent exits
A task's source travels once per connection: a RUN for a sha256 already sent carries None.
In a DONE, the outcome's `output` is the last piece of output, right after the last OUTPUT
chunk; an attachment sent in BLOB chunks is ``{"filename", "link_name", "stream": index,
"text": bool}`` in the results (no chunks: empty).

agent <-> fork server, over a socket pair (the fork server's end is the fd named on its command
line) carrying frames (``HEADER``, a 4-byte big-endian length, then that many bytes), each a
``marshal``-ed message; the fork server's own code (``compiled``) comes first, as the one frame
on its stdin, read by ``BOOTSTRAP``. The agent sends (CONFIG, {"attachment_limit"}), then RUN
(laid out as above, with the write ends of the task's output pipe and result pipe passed
alongside it as SCM_RIGHTS), KILL and STOP; the fork server answers with:
    (READY, pid)
    (EXITED, task_id, wait_status, timed_out, killed, duration)   the task's process ended
    (FAILED, task_id, error)      the task could not be started (its module does not compile)
    (STARTED, [(task_id, child_pid), ...])   tasks running for a while, so the agent can kill
                                  their groups if the fork server dies (a quick task needs no
                                  message of its own)

task process -> agent: its stdout and stderr on one pipe (raw bytes), and on the other, frames
of (BLOB, index, data) for big attachment contents, then one (RESULT, results, error). The agent
reads both, and sends the master OUTPUT, BLOB and DONE (a ``path`` attachment is still
``{"filename", "link_name", "path", "size"}`` in the RESULT: the agent reads the file and sends
its chunks).
``FrameDecoder`` is linear in the bytes it is fed, however they are split into reads.
"""

from __future__ import annotations

import marshal
import struct
from collections import namedtuple

# True only for type checkers. The shipped parts import typing (and whatever else only their
# annotations need) under it: the fork server loads every module they import, and every
# module it has loaded makes each of its forks dearer.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

# The oldest Python a node may run: the agent's start refuses older ones, ``dirt nodes add``
# names it, and tests check every shipped module against it.
PYTHON_FLOOR = (3, 9)

# Message kinds.
RUN = "run"
KILL = "kill"
LOAD = "load"
STOP = "stop"
READY = "ready"
DONE = "done"
FATAL = "fatal"
STARTED = "started"
ERROR = "error"
OUTPUT = "output"
BLOB = "blob"
CONFIG = "config"
RESULT = "result"
EXITED = "exited"
FAILED = "failed"

# The most bytes of bulk data one message carries.
CHUNK_SIZE = 1 << 20


if TYPE_CHECKING:

    class RunRequest(NamedTuple):
        """What a RUN message carries after its kind (sent as a plain tuple: ``(RUN,
        *request)``)."""

        task_id: str
        module_name: str
        sha256: str
        source: bytes | None  # the module's bytes; None when this connection had this sha256
        kwargs: dict[str, Any]
        timeout: float | None
        path: str = ""  # where the master has the module (for messages), e.g. "tasks/x.py"

else:
    RunRequest = namedtuple(
        "RunRequest",
        ("task_id", "module_name", "sha256", "source", "kwargs", "timeout", "path"),
        defaults=("",),
    )


def run_request(message: tuple[Any, ...]) -> RunRequest:
    """The request in a RUN message as received."""
    return RunRequest(*message[1:])


# outcomes ------------------------------------------------------------------------------------

# What a node reports for a finished task, in wire order: a tuple, not a dict, because execnet's
# pure-Python unserialiser on the master pays per object and this goes once per task.
OUTCOME_FIELDS = (
    "results",
    "error",
    "exit_code",
    "signal",
    "timed_out",
    "killed",
    "duration",
    "output",
)
# The master keeps the last this many bytes of a task's output with the task.
OUTPUT_TAIL = 64 * 1024
PLAIN_TYPES = (type(None), bool, int, float, str, bytes)


def outcome(
    results: Any = None,
    error: str | None = None,
    exit_code: int | None = None,
    signal: int | None = None,
    timed_out: bool = False,
    killed: bool = False,
    duration: float = 0.0,
    output: bytes = b"",
) -> tuple[Any, ...]:
    """An outcome as it goes on the wire (parameters in ``OUTCOME_FIELDS`` order)."""
    return (results, error, exit_code, signal, timed_out, killed, duration, output)


def without_results(wire: tuple[Any, ...], error: str) -> tuple[Any, ...]:
    """The same outcome with its results dropped and `error` saying why."""
    return (None, error, *wire[2:])


def decode_outcome(data: Any) -> tuple[Any, ...]:
    """Normalised fields, in ``OUTCOME_FIELDS`` order, of an outcome tuple (or a dict of them)."""
    if isinstance(data, dict):
        data = tuple(data.get(name) for name in OUTCOME_FIELDS)
    elif len(data) != len(OUTCOME_FIELDS):
        raise ValueError(f"an outcome has {len(OUTCOME_FIELDS)} fields, not {len(data)}")
    results, error, exit_code, sig, timed_out, killed, duration, output = data
    return (
        results,
        error,
        exit_code,
        sig,
        bool(timed_out),
        bool(killed),
        float(duration or 0.0),
        output or b"",
    )


def unserialisable_type(obj: object) -> str | None:
    """Name the first type inside obj that a plain-data transport cannot carry, else None."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, PLAIN_TYPES):
            continue
        # Exact types: execnet refuses subclasses (a namedtuple, an OrderedDict) too.
        if isinstance(item, (list, tuple)) and type(item) in (list, tuple):
            stack.extend(item)
        elif isinstance(item, dict) and type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        else:
            return type(item).__name__
    return None


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9, ``SIGRTMIN+2`` for a real-time signal, else ``unknown signal``."""
    import signal as signals  # not at the top: the fork server does without its enums

    try:
        return signals.Signals(number).name
    except ValueError:
        low = getattr(signals, "SIGRTMIN", None)
        high = getattr(signals, "SIGRTMAX", None)
        if low is not None and high is not None and low < number < high:
            return f"SIGRTMIN+{number - low}"
        return "unknown signal"


def python_too_old(python: str, version: tuple[int, ...]) -> str | None:
    """Why `python` at `version` cannot be a node, or None when it is new enough."""
    if tuple(version[:2]) >= PYTHON_FLOOR:
        return None
    need = ".".join(map(str, PYTHON_FLOOR))
    have = ".".join(map(str, version[:2]))
    return f"Python too old: {python} is {have}, the agent needs {need} or newer"


# framing -------------------------------------------------------------------------------------

HEADER = struct.Struct("!I")
READ_SIZE = 1 << 20  # bytes asked of one os.read on a framed pipe

# Run as ``python -c BOOTSTRAP``: reads the first frame on stdin (the fork server's code,
# compiled and marshalled by the agent, see ``compiled``) and runs it. The code is not on the
# command line: argv is capped at 128 KiB per argument and would show it all in ps.
BOOTSTRAP = f"""\
import marshal, os, struct
def read(n):
    chunks = []
    while n:
        chunk = os.read(0, n)
        if not chunk:
            raise SystemExit("dirt fork server: no source on stdin")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
code = marshal.loads(read(struct.unpack({HEADER.format!r}, read({HEADER.size}))[0]))
exec(code, {{"__name__": "__main__"}})
"""


def compiled(source: bytes | str, filename: str) -> bytes:
    """`source` compiled and marshalled, for ``BOOTSTRAP`` run by this same interpreter.

    Compiling is left to the process that starts the fork server: the compiler's memory, freed
    but still mapped (3.5 MB for the fork server's source, more than the rest of its heap),
    would otherwise stay in the fork server, whose every fork copies the page table entries of
    all it has mapped.
    """
    return marshal.dumps(compile(source, filename, "exec"))


def frame(payload: bytes) -> bytes:
    """`payload` as one frame."""
    return HEADER.pack(len(payload)) + payload


def encode(message: Any) -> bytes:
    """One message as a frame of its ``marshal`` form."""
    return frame(marshal.dumps(message))


class FrameDecoder:
    """Turns the bytes read from a framed pipe back into messages.

    Linear in the bytes fed, whatever the split into reads: one growing buffer with a read
    offset, compacted only when the consumed part is the larger half.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0

    def feed(self, data: bytes) -> list[Any]:
        """Take the next bytes read; return the messages they complete, in order."""
        buffer = self._buffer
        buffer += data
        start = self._start
        end = len(buffer)
        messages = []
        with memoryview(buffer) as view:
            while end - start >= HEADER.size:
                (size,) = HEADER.unpack_from(view, start)
                stop = start + HEADER.size + size
                if stop > end:
                    break
                with view[start + HEADER.size : stop] as payload:
                    messages.append(marshal.loads(payload))
                start = stop
        if start == end:
            buffer.clear()
            start = 0
        elif start > end - start:
            del buffer[:start]
            start = 0
        self._start = start
        return messages

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer) - self._start
