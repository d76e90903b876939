"""A host behind NAT, for the agent tests: a network namespace with no link to this one but an
outbound relay to the master, so an agent inside reaches the master and nothing outside can
reach the agent (GitLab runners' and Jenkins inbound agents' situation).

The namespace has only its loopback. `Outbound` listens on 127.0.0.1:PORT inside it (the
socket is made by a thread that entered the namespace with setns(2)) and relays each
connection to the master's address in this namespace, the way a NAT gateway lets connections
out and none in. Closing the relay cuts the network, as pulling the cable would.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from pathlib import Path

from tests.ssh.sshd import NETNS_PREFIX, _ip

CLONE_NEWNET = 0x40000000


def _enter(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def listen_inside(namespace: str) -> socket.socket:
    """A socket listening on 127.0.0.1 (any port) inside `namespace`."""
    made: list[socket.socket | BaseException] = []

    def inside() -> None:
        # setns moves only this thread, which ends right after: the test process stays home.
        try:
            with open(f"/var/run/netns/{namespace}", "rb") as handle:
                _enter(handle.fileno())
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            made.append(sock)
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=inside, name="dirt-test-setns")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


class Outbound:
    """A namespace whose only way out is a relay to `target` (host, port)."""

    def __init__(self, index: int, target: tuple[str, int]) -> None:
        self.name = f"{NETNS_PREFIX}-{os.getpid()}-agent{index}"
        self.target = target
        _ip("netns", "add", self.name)
        try:
            _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
            self.listener = listen_inside(self.name)
        except Exception:
            _ip("netns", "del", self.name, check=False)
            raise
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="dirt-test-relay", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The master's URL as seen from inside."""
        return f"http://127.0.0.1:{self.port}/"

    def links(self) -> list[str]:
        """The network interfaces inside (only `lo`: no route leads in)."""
        out = _ip("netns", "exec", self.name, "ip", "-o", "link", "show").stdout
        return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]

    def command(self, *args: str) -> list[str]:
        """`args` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                inner, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(inner,), daemon=True).start()

    def _relay(self, inner: socket.socket) -> None:
        try:
            outer = socket.create_connection(self.target, timeout=5)
        except OSError:
            inner.close()  # the master is down: the agent's connection ends at once
            return
        outer.settimeout(None)
        with self._lock:
            self._open.update((inner, outer))
        threading.Thread(target=self._pump, args=(outer, inner), daemon=True).start()
        self._pump(inner, outer)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every relayed connection (new ones still go through)."""
        with self._lock:
            opened, self._open = self._open, set()
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        self._thread.join(2)
        self.cut()
        out = _ip("netns", "pids", self.name, check=False).stdout
        for pid in out.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        _ip("netns", "del", self.name, check=False)


def netns_dir_exists() -> bool:
    return Path("/var/run/netns").is_dir()
