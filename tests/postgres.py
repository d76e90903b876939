"""A real PostgreSQL server for the tests: initdb in a temp dir, a free loopback port."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def scratch_folder() -> str | None:
    """Where the data folder goes: /dev/shm (tmpfs) when it has room, else the temp folder.

    On a disk every database created and dropped costs hundreds of file creations and
    deletions, slow on a disk mounted with `discard` (the CI machines'): the run's databases
    took 15 s to delete at its end, and each CREATE DATABASE 0.15-0.3 s instead of 0.03 s."""
    shm = "/dev/shm"
    try:
        room = shutil.disk_usage(shm).free
    except OSError:
        return None
    return shm if room > 2 * 1024**3 and os.access(shm, os.W_OK) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """Starts with `start()`, gives a fresh database per `new_database()`, stops on `stop()`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dirt-pg-", dir=scratch_folder()))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        command = list(args)
        if self.as_root:
            # PostgreSQL refuses to run as root.
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            find_bin("initdb") or "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.start_server()

    def start_server(self) -> None:
        """Start the server on its data folder (again, after `stop_server`)."""
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            find_bin("pg_ctl") or "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop_server(self) -> None:
        """Stop the server as an administrator restarting it would: clients are cut off."""
        self._run(find_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(statement)

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database of `new_database`, cutting off whoever is still connected: the
        data folder, in memory, keeps only the databases of tests still running."""
        self._admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def stop(self) -> None:
        # An already stopped server is fine: the folder goes either way.
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(
                find_bin("pg_ctl") or "pg_ctl",
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "-w",
                "stop",
            )
        shutil.rmtree(self.dir, ignore_errors=True)
