"""Master side of one node: a persistent execnet gateway running the node agent.

One `NodeConnection` per node keeps one gateway and one agent channel open; every task on that
node goes over that channel (the messages are in ``dirt/remote/protocol.py``). Output chunks,
attachment chunks and outcomes arrive on execnet's receiver thread: output goes to
``on_output`` as it comes, attachments into the blob store (see ``incoming.py``), and the
outcome, once its attachments are stored, to ``on_done``. If the gateway dies, ``on_lost`` gets
the ids of the tasks that were in flight, once, and their unfinished uploads are dropped.

The receiver thread is also what paces the node: while it is busy (writing a chunk, or waiting
for room in the dispatcher's queue of output to store), execnet reads no more, the node's
sending waits, and so do the task processes behind it.
"""

from __future__ import annotations

import logging
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import execnet

from dirt.blobs import BlobStore
from dirt.dispatch.incoming import Incoming, Limits, OnOutput
from dirt.remote import protocol
from dirt.remote import source as shipped_source

log = logging.getLogger(__name__)

ISOLATIONS = ("process", "thread")
_CLOSED = object()  # endmarker execnet hands the callback when the channel closes


@dataclass
class Outcome:
    """What came back from a node for one task. The results are not validated here.

    The fields from `results` to `output` are ``protocol.OUTCOME_FIELDS``, in that order.
    """

    task_id: str
    results: object
    error: str | None
    exit_code: int | None
    signal: int | None
    timed_out: bool
    killed: bool
    duration: float
    output: str
    received: float = field(default_factory=time.time)  # when the master heard of it

    @classmethod
    def from_wire(cls, task_id: str, data: Any, output: str | None = None) -> Outcome:
        """From the outcome a node sent (see ``protocol.outcome``), with `output` the tail of
        the task's whole output (default: the outcome's own)."""
        results, error, exit_code, sig, timed_out, killed, duration, piece = (
            protocol.decode_outcome(data)
        )
        text = piece if output is None else output
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return cls(task_id, results, error, exit_code, sig, timed_out, killed, duration, text)


class NodeLostError(Exception):
    """The node could not be reached, or its gateway or agent went away."""


def popen_spec(python: str | None = None) -> str:
    """An execnet spec for a local subprocess node running `python` (default: this one)."""
    return f"popen//python={python or sys.executable}"


class NodeConnection:
    """One persistent gateway to a node with the dirt agent running on it."""

    def __init__(
        self,
        spec: str,
        isolation: str,
        on_done: Callable[[Outcome], None],
        on_lost: Callable[[list[str], str], None],
        group: execnet.Group | None = None,
        *,
        on_output: OnOutput | None = None,
        blobs: BlobStore | None = None,
        limits: Limits | None = None,
    ) -> None:
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, not {isolation!r}")
        self.spec = spec
        self.isolation = isolation
        self._on_done = on_done
        self._on_lost = on_lost
        self._group = group
        self.limits = limits or Limits()
        # Touched only by the receiver thread (and by _channel_closed, its last call).
        self._incoming = Incoming(blobs, self.limits, on_output)
        self._gw: execnet.Gateway | None = None
        self._channel: Any = None
        self._lock = threading.Lock()
        # Held across "has this sha been sent?" and the send itself, so a second task with the
        # same module can never overtake the one carrying the source.
        self._send_lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._sent_shas: set[str] = set()
        self._opened = False
        self._closing = False
        self._lost = False
        self._fatal: str | None = None
        self._ready = threading.Event()
        self.agent_info: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        self._load_replies: queue.Queue[tuple[list[float], int]] = queue.Queue()

    # lifecycle -----------------------------------------------------------------------------

    def open(self, timeout: float = 30) -> None:
        """Make the gateway and start the agent; NodeLostError says why when that fails."""
        if self._gw is not None:
            raise RuntimeError(f"connection to {self.spec} is already open")
        if self._group is None:
            self._group = execnet.Group()
        self._gw = self._make_gateway(timeout)
        try:
            self._channel = self._gw.remote_exec(shipped_source("agent"))
            self._channel.setcallback(self._receive, endmarker=_CLOSED)
            self._channel.send(
                {
                    "isolation": self.isolation,
                    "forkserver_source": shipped_source("forkserver").encode("utf-8"),
                    "output_limit": self.limits.output,
                    "attachment_limit": self.limits.attachments,
                }
            )
        except (OSError, EOFError, execnet.DataFormatError) as exc:
            self._abandon()
            raise NodeLostError(f"could not start the agent on {self.spec}: {exc}") from exc
        if not self._ready.wait(timeout):
            self._abandon()
            raise NodeLostError(f"agent on {self.spec} did not start within {timeout:g}s")
        with self._lock:
            started = self.agent_info and not self._lost
            if started:
                self._opened = True
        if not started:
            reason = self._fatal or "the gateway closed while the agent was starting"
            self._abandon()
            raise NodeLostError(f"agent on {self.spec} failed: {reason}")

    def _make_gateway(self, timeout: float) -> execnet.Gateway:
        # makegateway has no timeout of its own and an ssh login can hang; wait for it in a
        # helper thread and give up (exiting the late gateway, if one comes) after `timeout`.
        done = threading.Event()
        box: dict[str, Any] = {}
        group = self._group
        assert group is not None

        def make() -> None:
            try:
                gw = group.makegateway(self.spec)
            except BaseException as exc:
                box["error"] = exc
            else:
                with self._lock:
                    box["gw"] = gw
                    late = box.get("abandoned", False)
                if late:
                    gw.exit()
            done.set()

        threading.Thread(target=make, name=f"dirt-connect-{self.spec}", daemon=True).start()
        if not done.wait(timeout):
            with self._lock:
                box["abandoned"] = True
                gw = box.get("gw")
            if gw is None:
                raise NodeLostError(f"could not reach {self.spec} within {timeout:g}s")
        if "error" in box:
            exc = box["error"]
            raise NodeLostError(f"could not reach {self.spec}: {exc}") from exc
        made: execnet.Gateway = box["gw"]
        return made

    def _abandon(self) -> None:
        with self._lock:
            self._closing = True
        self._shutdown_gateway(timeout=5)

    def close(self, timeout: float = 10) -> None:
        """Stop the agent (its running tasks are killed) and exit the gateway. Idempotent.

        Outcomes of tasks killed by the stop may still reach on_done; on_lost is not called.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            lost = self._lost
        if self._channel is not None and not lost:
            try:
                with self._send_lock:
                    self._channel.send((protocol.STOP,))
                self._channel.waitclose(timeout)
            except (OSError, EOFError, execnet.RemoteError, execnet.TimeoutError):
                pass
        self._shutdown_gateway(timeout)

    def _shutdown_gateway(self, timeout: float) -> None:
        gw = self._gw
        if gw is None:
            return
        gw.exit()
        gw.join(timeout)
        # Group.terminate() only waits for gateways still registered, and exit() unregisters
        # this one; so reap its subprocess here, as terminate() would (same private _io).
        popen = getattr(gw._io, "popen", None)
        if popen is not None:
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()

    # state ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> set[str]:
        with self._lock:
            return set(self._in_flight)

    @property
    def alive(self) -> bool:
        with self._lock:
            if not self._opened or self._closing or self._lost:
                return False
        return not self._channel.isclosed()

    # requests ------------------------------------------------------------------------------

    def sysinfo(self, timeout: float = 30) -> dict[str, Any]:
        """Run the sysinfo probe over this connection's gateway."""
        if self._gw is None:
            raise RuntimeError(f"connection to {self.spec} is not open")
        try:
            channel = self._gw.remote_exec(shipped_source("sysinfo"))
            info = channel.receive(timeout)
            channel.waitclose(timeout)
        except (OSError, EOFError, execnet.RemoteError, execnet.TimeoutError) as exc:
            raise NodeLostError(f"sysinfo probe on {self.spec} failed: {exc}") from exc
        if not isinstance(info, dict):
            raise NodeLostError(f"sysinfo probe on {self.spec} sent {type(info).__name__}")
        return info

    def run(
        self,
        task_id: str,
        module_name: str,
        source: bytes | str,
        sha256: str,
        kwargs: dict[str, Any],
        timeout: float | None,
        path: str = "",
    ) -> None:
        """Start a task on the node and return at once; its Outcome goes to on_done.

        `source` is the module's bytes (a str is sent UTF-8 encoded); `path`, where the module
        is (for messages).
        """
        if isinstance(source, str):
            source = source.encode("utf-8")
        with self._send_lock:
            with self._lock:
                if not self._opened or self._closing or self._lost:
                    raise NodeLostError(f"connection to {self.spec} is not open")
                first = sha256 not in self._sent_shas
                self._in_flight.add(task_id)
            message = (
                protocol.RUN,
                *protocol.RunRequest(
                    task_id,
                    module_name,
                    sha256,
                    source if first else None,
                    dict(kwargs),
                    timeout,
                    path,
                ),
            )
            try:
                self._channel.send(message)
            except execnet.DataFormatError as exc:
                with self._lock:
                    self._in_flight.discard(task_id)
                raise TypeError(f"kwargs of task {task_id} cannot be sent: {exc}") from exc
            except (OSError, EOFError) as exc:
                with self._lock:
                    self._in_flight.discard(task_id)
                raise NodeLostError(f"cannot send to {self.spec}: {exc}") from exc
            if first:
                self._sent_shas.add(sha256)

    def kill(self, task_id: str) -> None:
        """Kill a running task; its Outcome then comes back with killed=True."""
        with self._lock:
            if task_id not in self._in_flight or self._lost or self._closing:
                return
        try:
            with self._send_lock:
                self._channel.send((protocol.KILL, task_id))
        except (OSError, EOFError) as exc:
            raise NodeLostError(f"cannot send to {self.spec}: {exc}") from exc

    def load(self, timeout: float = 5) -> tuple[list[float], int]:
        """The node's load averages [1, 5, 15 min] and how many tasks its agent is running."""
        with self._load_lock:
            # A reply that came after an earlier load() gave up would answer the wrong call.
            while not self._load_replies.empty():
                self._load_replies.get_nowait()
            if not self.alive:
                raise NodeLostError(f"connection to {self.spec} is not open")
            try:
                with self._send_lock:
                    self._channel.send((protocol.LOAD,))
            except (OSError, EOFError) as exc:
                raise NodeLostError(f"cannot send to {self.spec}: {exc}") from exc
            try:
                return self._load_replies.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no load reply from {self.spec} in {timeout:g}s") from None

    # receiving (execnet's receiver thread) -------------------------------------------------

    def _receive(self, message: Any) -> None:
        # An exception escaping here would make execnet close the channel; never let one out.
        try:
            if message is _CLOSED:
                self._channel_closed()
                return
            kind = message[0]
            if kind == protocol.OUTPUT:
                self._incoming.output(message[1], message[2], message[3])
            elif kind == protocol.BLOB:
                self._incoming.blob(message[1], message[2], message[3])
            elif kind == protocol.DONE:
                task_id = message[1]
                wire, tail = self._incoming.finish(task_id, message[2])
                with self._lock:
                    self._in_flight.discard(task_id)
                self._on_done(Outcome.from_wire(task_id, wire, tail))
            elif kind == protocol.LOAD:
                self._load_replies.put((list(message[1]), int(message[2])))
            elif kind == protocol.READY:
                self.agent_info = dict(message[1])
                self._ready.set()
            elif kind == protocol.FATAL:
                self._fatal = str(message[1])
                self._ready.set()
            else:
                log.warning("unknown message from agent on %s: %r", self.spec, kind)
        except Exception:
            log.exception("handling a message from %s failed", self.spec)

    def _channel_closed(self) -> None:
        self._incoming.abort()  # no blob appears for an upload cut short
        with self._lock:
            self._ready.set()
            if self._lost or self._closing or not self._opened:
                self._lost = True
                return
            self._lost = True
            task_ids = sorted(self._in_flight)
            self._in_flight.clear()
        if self._fatal:
            reason = f"agent on {self.spec} failed: {self._fatal}"
        else:
            reason = f"lost connection to {self.spec} (gateway process died or node unreachable)"
        self._on_lost(task_ids, reason)
