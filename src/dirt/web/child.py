"""A web process of `dirt serve` (see dirt.web.workers): serve the inherited socket until told
to stop (SIGTERM, SIGINT) or until the lifeline from the parent closes (the parent is gone)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import signal
import socket
import threading

from dirt.config import Settings
from dirt.logs import setup_logging

log = logging.getLogger("dirt.web")


def _watch_lifeline(fd: int, stopping: threading.Event) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 64):
            pass
    stopping.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dirt.web.child")
    for name in ("socket-fd", "lifeline-fd", "ready-fd", "settings-fd", "index"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--host", required=True)
    args = parser.parse_args(argv)
    with os.fdopen(args.settings_fd, "rb") as pipe:
        settings: Settings = pickle.load(pipe)
    setup_logging(settings)
    stopping = threading.Event()

    def stop(_signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=_watch_lifeline, args=(args.lifeline_fd, stopping), daemon=True).start()

    from dirt.service import Service
    from dirt.web.app import create_app
    from dirt.web.run import WebServer

    sock = socket.socket(fileno=args.socket_fd)
    service = Service(settings)
    server = WebServer(create_app(service, bind_host=args.host), args.host, 0, sock=sock)
    try:
        # Links in the notifications this process's writes make point at the server's URL.
        service.serving_at(server.start())
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
        while not stopping.wait(0.5):
            if not server.serving:
                log.error("web process %d: the web server stopped on its own", os.getpid())
                return 1
    finally:
        server.stop()
        service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
