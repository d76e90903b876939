"""The pull-mode agent's command line: ``python3 agent.py URL --token TOKEN ...`` (the served
file) or ``dirt agent URL ...``; runs a `PullAgent` until a signal, ``--once`` or a fatal error.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from dirt.remote.http_agent import PullAgent
from dirt.remote.http_client import TOKEN_ENV, Fatal, Master, Refused, Unreachable, log

EXIT_FATAL = 1


def parse_args(argv: list[str] | None, prog: str = "agent.py") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="dirt's pull-mode agent: fetches tasks from the dirt master at URL over "
        "HTTP(S) and runs them, each in a process of its own.",
    )
    parser.add_argument("url", metavar="URL", help="the master, e.g. https://ci.example.org/")
    parser.add_argument(
        "--token",
        default=None,
        help=f"an agent token (`dirt token create NAME --scope agent`); default: ${TOKEN_ENV}",
    )
    parser.add_argument(
        "--slots", type=int, default=None, help="tasks run at once (default: the CPU count)"
    )
    parser.add_argument(
        "--name", default=None, help="the node's name on the master (default: the host name)"
    )
    parser.add_argument("--once", action="store_true", help="run one task, report it, and exit")
    parser.add_argument(
        "--ca", metavar="FILE", default=None,
        help="trust the master's certificate from this CA file (default: the system's CAs)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    if args.slots is not None and args.slots < 1:
        parser.error("--slots must be at least 1")
    args.token = args.token or os.environ.get(TOKEN_ENV)
    if not args.token:
        parser.error(f"give the agent token with --token TOKEN (or ${TOKEN_ENV})")
    return args


def main(argv: list[str] | None = None, prog: str = "agent.py") -> int:
    args = parse_args(argv, prog)
    # Tasks inherit this process's environment: they must not read the agent's token.
    os.environ.pop(TOKEN_ENV, None)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s dirt-agent %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stopping = threading.Event()
    try:
        master = Master(args.url, args.token, stopping, args.ca)
    except Fatal as exc:
        log.error("%s", exc)
        return EXIT_FATAL
    agent = PullAgent(
        master, args.name or socket.gethostname(), args.slots or os.cpu_count() or 1, args.once
    )

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping; running tasks go back to the master", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def work() -> None:
        try:
            agent.start()
            agent.poll()
        except Fatal as exc:
            agent.stop(str(exc))
        except Refused as exc:
            agent.stop(f"the master refused this agent: {exc.message}")
        except Unreachable:
            agent.stop()  # stopping while the master could not be reached
        except Exception as exc:
            log.exception("agent failed")
            agent.stop(f"agent failed: {exc}")

    thread = threading.Thread(target=work, name="dirt-agent-poll", daemon=True)
    thread.start()
    while not stopping.wait(0.5):
        pass
    agent.shutdown()
    if agent.fatal:
        log.error("%s", agent.fatal)
        return EXIT_FATAL
    return 0


def reap_strays(most: float = 1.0) -> None:
    """Wait for the children this process did not start: run as `python3 - <<END` from a
    batch job script that exec'd it, the shell's here-document writer (sh forks one for a
    long here-document) is one. Left a zombie, it keeps the job's process group alive, and
    Slurm (proctrack/pgid) then waits 1 s, 2 s, ... before it ends the job."""
    deadline = time.monotonic() + most
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)


if __name__ == "__main__":
    code = main()
    # Everything is reported and the fork server stopped: skip the interpreter's teardown, so
    # a batch job (`--once`) ends, and frees its cores, the moment its result is in.
    reap_strays()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
