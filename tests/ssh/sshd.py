"""Real sshd servers for tests and benchmarks: loopback ports, or one per network namespace.

Used by tests/ssh/conftest.py and bench/ssh.py (import as ``tests.ssh.sshd``). Keys are
generated per run in a temporary folder; nothing under ~/.ssh or /etc/ssh is read or written:
every client goes through the ssh_config file written here (``-F``), which names the user key
and a private known_hosts file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
NETNS_PREFIX = "dirt-test"


def sshd_available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh") is not None and os.path.exists(SSH_KEYGEN)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


@dataclass
class Keys:
    """A host key and a user key for one run, plus the client config that uses them."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host_key = self.folder / "host_ed25519"
        self.user_key = self.folder / "user_ed25519"
        self.other_key = self.folder / "stranger_ed25519"  # a key no server authorises
        for key in (self.host_key, self.user_key, self.other_key):
            if not key.exists():
                _keygen(key, key.name)
        self.authorized_keys = self.folder / "authorized_keys"
        self.authorized_keys.write_text(self.user_key.with_suffix(".pub").read_text())
        self.known_hosts = self.folder / "known_hosts"
        self.known_hosts.touch()
        self.ssh_config = self.folder / "ssh_config"
        self.aliases: dict[str, tuple[str, int]] = {}
        self.write_client_config()

    def alias(self, name: str, host: str, port: int) -> None:
        """Make `name` an ssh_config alias for host:port."""
        self.aliases[name] = (host, port)
        self.write_client_config()

    def write_client_config(self) -> None:
        lines = []
        for name, (host, port) in self.aliases.items():
            lines += [f"Host {name}", f"    HostName {host}", f"    Port {port}", ""]
        lines += [
            "Host *",
            "    User root",
            f"    IdentityFile {self.user_key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {self.known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    LogLevel ERROR",
            "",
        ]
        self.ssh_config.write_text("\n".join(lines))


@dataclass
class Sshd:
    """One running sshd; `stop()` kills it and every session it started."""

    name: str
    host: str
    port: int
    folder: Path
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def config_text(self, keys: Keys) -> str:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {keys.host_key}",
            f"AuthorizedKeysFile {keys.authorized_keys}",
            f"PidFile {self.folder / 'sshd.pid'}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PrintMotd no",
            "UseDNS no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "LogLevel ERROR",
        ]
        if self.env:
            lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in self.env.items()))
        return "\n".join(lines) + "\n"

    def start(self, keys: Keys, timeout: float = 10) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation folder
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "sshd_config"
        config.write_text(self.config_text(keys))
        command = [SSHD, "-D", "-e", "-f", str(config)]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        if getattr(self, "log", None) is not None:
            self.log.close()  # a restart after kill_all()
        self.log = open(self.folder / "sshd.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd {self.name} exited: {self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd {self.name} did not listen on {self.address}: {self.log_text()}")

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.folder / "sshd.log").read_text(errors="replace")[-2000:]
        return ""

    def session_pids(self) -> list[int]:
        """This server and every process it started (sessions, shells, Pythons, tasks)."""
        if self.netns:
            out = subprocess.run(
                ["ip", "netns", "pids", self.netns], capture_output=True, text=True
            ).stdout
            return [int(p) for p in out.split()]
        if self.proc is None:
            return []
        return [self.proc.pid, *_descendants(self.proc.pid)]

    def kill_all(self) -> None:
        """The host dies: its sshd and everything it runs are killed at once (SIGKILL).

        Everything is stopped first (a stopped process cannot fork), found again until no
        new process shows up, then killed.
        """
        stopped: set[int] = set()
        for _ in range(50):
            fresh = {p for p in self.session_pids() if p not in stopped and _running(p)}
            if not fresh:
                break
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= fresh
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)

    def stop(self) -> None:
        self.kill_all()
        self.proc = None
        log = getattr(self, "log", None)
        if log is not None:
            log.close()
            self.log = None


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


# ---- network namespaces ------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def namespaces_possible() -> tuple[bool, str]:
    """Whether this process can make network namespaces and veth pairs (root, iproute2).

    DIRT_TEST_NO_NETNS=1 says no, to run the loopback fallback on purpose.
    """
    if os.environ.get("DIRT_TEST_NO_NETNS"):
        return False, "DIRT_TEST_NO_NETNS is set"
    if shutil.which("ip") is None:
        return False, "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return False, "not root"
    name = f"{NETNS_PREFIX}-probe-{os.getpid()}"
    result = _ip("netns", "add", name, check=False)
    if result.returncode != 0:
        return False, f"`ip netns add` failed: {result.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return True, ""


@dataclass
class Netns:
    """A network namespace joined to this one by a veth pair on a /30 of 10.N.0.0/16."""

    name: str
    index: int
    outer_if: str = ""
    inner_address: str = ""
    outer_address: str = ""

    def create(self, with_address: bool = True) -> None:
        self.outer_if = f"dtv{os.getpid() % 10000}x{self.index}"
        inner_if = f"{self.outer_if}n"
        base = 4 * self.index
        # The second octet follows the pid, so test runs side by side (several checkouts on one
        # machine) do not put the same /30 on two veths of the root namespace.
        net = f"10.{100 + os.getpid() % 150}"
        self.outer_address = f"{net}.{base // 256}.{base % 256 + 1}"
        self.inner_address = f"{net}.{base // 256}.{base % 256 + 2}"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.outer_if, "type", "veth", "peer", "name", inner_if)
            _ip("link", "set", inner_if, "netns", self.name)
            _ip("addr", "add", f"{self.outer_address}/30", "dev", self.outer_if)
            _ip("link", "set", self.outer_if, "up")
            inside = ("netns", "exec", self.name, "ip")
            _ip(*inside, "link", "set", "lo", "up")
            if with_address:
                _ip(*inside, "addr", "add", f"{self.inner_address}/30", "dev", inner_if)
            _ip(*inside, "link", "set", inner_if, "up")
        except Exception:
            self.destroy()
            raise

    def destroy(self) -> None:
        out = _ip("netns", "pids", self.name, check=False).stdout
        for pid in out.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if self.outer_if:
            _ip("link", "del", self.outer_if, check=False)  # takes its peer with it
        _ip("netns", "del", self.name, check=False)


class Fleet:
    """Several sshd hosts: one per network namespace when possible, else loopback ports."""

    def __init__(self, folder: Path | None = None, use_namespaces: bool = True) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="dirt-sshd-"))
        self._own_folder = folder is None
        self.keys = Keys(self.folder / "keys")
        self.servers: list[Sshd] = []
        self.namespaces: list[Netns] = []
        possible, why = namespaces_possible() if use_namespaces else (False, "not asked for")
        self.isolated = possible
        self.why_not_isolated = why

    def add(self, name: str, env: dict[str, str] | None = None) -> Sshd:
        """Start one more host, reachable as `name` through the client ssh_config."""
        index = len(self.servers) + 1
        env = {"DIRT_TEST_HOST": name, **(env or {})}  # every session there sees its name
        if self.isolated:
            netns = Netns(f"{NETNS_PREFIX}-{os.getpid()}-{index}", index)
            netns.create()
            self.namespaces.append(netns)
            server = Sshd(name, netns.inner_address, 22, self.folder / name, netns.name, env)
        else:
            server = Sshd(name, "127.0.0.1", free_port(), self.folder / name, None, env)
        server.start(self.keys)
        self.servers.append(server)
        self.keys.alias(name, server.host, server.port)
        return server

    def unreachable_address(self) -> str | None:
        """An address in a namespace of ours that no one answers (ARP fails): no route."""
        if not self.isolated:
            return None
        netns = Netns(f"{NETNS_PREFIX}-{os.getpid()}-void", 60)
        netns.create(with_address=False)
        self.namespaces.append(netns)
        # The kernel gives up on ARP after one request unanswered for 0.1 s, not 3 for 1 s
        # each: the same "no route to host", 3 s sooner.
        neigh = Path("/proc/sys/net/ipv4/neigh") / netns.outer_if
        (neigh / "mcast_solicit").write_text("1")
        (neigh / "retrans_time_ms").write_text("100")
        return netns.inner_address

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        for netns in self.namespaces:
            with contextlib.suppress(Exception):
                netns.destroy()
        self.servers.clear()
        self.namespaces.clear()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def fleet(names: list[str], use_namespaces: bool = True) -> Iterator[Fleet]:
    with Fleet(use_namespaces=use_namespaces) as hosts:
        for name in names:
            hosts.add(name)
        yield hosts
