"""A real one-host Slurm cluster for the tests: munged, slurmctld and slurmd in a temp dir.

Everything a cluster owns lives under one temp dir and a pair of free ports, so two test runs
on this machine (other checkouts test side by side) never share anything:
- munged gets its own key and socket (`munged --socket`), named to Slurm by
  `AuthInfo=socket=...` in slurm.conf, which every daemon and client reads;
- slurm.conf is passed through `SLURM_CONF` (without it the clients try DNS SRV records);
- state, spool, pid and log files are all in the temp dir.

Settings this machine needs (no cgroups, no accounting daemon):
`ProctrackType=proctrack/pgid` and `TaskPlugin=task/none` (with cgroups, jobs "complete"
without running and the node drains); accounting off, so there is no `sacct` and a finished
job is forgotten MinJobAge (300 s) after it ended. `SelectTypeParameters=CR_Core`: with
CR_Core_Memory and no DefMemPerCPU every job would claim the node's whole memory and jobs
would run one at a time.

Teardown cancels every job, stops the daemons and then kills whatever still carries this
cluster's SLURM_CONF in its environment (slurmstepd and job processes outlive slurmd).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
PARTITION = "debug"
FEATURES = "dirt_fast"  # the node's Slurm features (tasks may require them: --constraint)
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def find_program(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def slurm_available() -> tuple[bool, str]:
    """(True, "") when this machine can start a cluster, else (False, what is missing)."""
    missing = [name for name in DAEMONS + CLIENTS if find_program(name) is None]
    if missing:
        return False, f"Slurm/munge programs {', '.join(missing)} (packages slurm-wlm, munge)"
    if os.geteuid() != 0:
        return False, "root (slurmd starts jobs as their owner; make test runs as root)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return False, "the munge user (package munge)"
    return True, ""


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports; held open together so none is handed out twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


class SlurmCluster:
    """Starts with `start()`, clients use `env`, stops (and cleans up) on `stop()`."""

    def __init__(self, partition: str = PARTITION) -> None:
        self.partition = partition
        self.dir = Path(tempfile.mkdtemp(prefix="dirt-slurm-"))
        self.dir.chmod(0o755)  # munged checks every folder above its socket
        self.conf = self.dir / "slurm.conf"
        self.munge_dir = self.dir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.node_name = socket.gethostname().split(".")[0]
        self.ports: list[int] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.started_in: float | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs on top of os.environ to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    # ---- start ----------------------------------------------------------------------------

    def start(self, timeout: float = 30, attempts: int = 3) -> None:
        """Start munged, slurmctld and slurmd; return when the node is idle.

        A port taken between choosing it and binding it (another run started a cluster at
        that moment) makes a daemon exit at once: then new ports are tried.
        """
        began = time.monotonic()
        self._start_munged()
        for attempt in range(attempts):
            self.ports = free_ports(2)
            self._write_conf()
            self._spawn("slurmctld", [find_program("slurmctld") or "slurmctld", "-D"])
            self._spawn("slurmd", [find_program("slurmd") or "slurmd", "-D", "-N", self.node_name])
            try:
                self._wait_idle(timeout)
                break
            except RuntimeError:
                died = [n for n in ("slurmctld", "slurmd") if self.processes[n].poll() is not None]
                self._stop_slurm_daemons()
                if not died or attempt == attempts - 1:
                    raise
        self.started_in = time.monotonic() - began

    def _start_munged(self) -> None:
        self.munge_dir.mkdir(mode=0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for path in (self.munge_dir, key):
            shutil.chown(path, "munge", "munge")
        argv = [
            find_program("munged") or "munged",
            "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={self.munge_dir / 'munged.pid'}",
            f"--log-file={self.munge_dir / 'munged.log'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
        ]
        # munged refuses to run as root; it runs as the owner of its key.
        self._spawn("munged", argv, user="munge")
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            if self.processes["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{self.log_tail('munged')}")
            time.sleep(0.02)

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(exist_ok=True)
        hardware = subprocess.run(
            [find_program("slurmd") or "slurmd", "-C"],
            capture_output=True,
            text=True,
            check=True,
            env=self.client_env(),
        ).stdout.splitlines()[0]  # "NodeName=vm CPUs=2 ... RealMemory=24105"; then UpTime=
        _, _, hardware = hardware.partition(" ")
        ctld_port, slurmd_port = self.ports
        d = self.dir
        self.conf.write_text(
            f"""\
ClusterName=dirt
SlurmctldHost={self.node_name}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "slurmctld.pid"}
SlurmdPidFile={d / "slurmd.pid"}
SlurmctldLogFile={d / "log" / "slurmctld.log"}
SlurmdLogFile={d / "log" / "slurmd.log"}
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
NodeName={self.node_name} {hardware} NodeAddr=127.0.0.1 State=UNKNOWN Features={FEATURES}
PartitionName={self.partition} Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP
""",
            encoding="utf-8",
        )

    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> None:
        out = open(self.dir / f"{name}.out", "ab")  # noqa: SIM115 (the daemon owns it)
        with out:
            self.processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.client_env(),
                start_new_session=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name in ("slurmctld", "slurmd"):
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"{name} exited at start:\n{self.log_tail(name)}")
            state = self.node_state()
            if state == "idle":
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"node {self.node_name} not idle after {timeout} s (state {state!r}):\n"
            f"{self.log_tail('slurmctld')}\n{self.log_tail('slurmd')}"
        )

    # ---- use ------------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=self.client_env(),
            timeout=30,
            check=check,
        )

    def node_state(self) -> str:
        found = self.run("sinfo", "-h", "-n", self.node_name, "-o", "%T", check=False)
        return found.stdout.strip() if found.returncode == 0 else ""

    def job_ids(self) -> list[str]:
        """Every job the controller still knows, in any state."""
        found = self.run("squeue", "-h", "-t", "all", "-o", "%i", check=False)
        return found.stdout.split() if found.returncode == 0 else []

    def log_tail(self, name: str, lines: int = 30) -> str:
        texts = []
        for path in (self.dir / f"{name}.out", self.dir / "log" / f"{name}.log"):
            with contextlib.suppress(OSError):
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts) or f"({name} wrote nothing)"

    # ---- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job, stop the daemons, kill what they left, delete the temp dir."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError):
                self.run("scancel", "--full", *self.job_ids(), check=False)
        self._stop_slurm_daemons()
        self._terminate("munged")
        self.kill_leftovers()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_slurm_daemons(self) -> None:
        for name in ("slurmd", "slurmctld"):
            self._terminate(name)

    def _terminate(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def leftovers(self) -> list[int]:
        """Processes (slurmstepd, jobs) that carry this cluster's SLURM_CONF."""
        marker = b"\0SLURM_CONF=" + str(self.conf).encode() + b"\0"
        found = []
        for pid in _pids():
            with contextlib.suppress(OSError):
                environ = (Path("/proc") / str(pid) / "environ").read_bytes()
                if marker in b"\0" + environ + b"\0":
                    found.append(pid)
        return [pid for pid in found if pid != os.getpid()]

    def kill_leftovers(self) -> None:
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)
