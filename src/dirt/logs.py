"""Log lines to the console and the project's log file, with time, host and project."""

from __future__ import annotations

import logging
import socket
import sys

from dirt.config import Settings

FORMAT = "%(asctime)s %(hostname)s %(project)s %(levelname)s %(message)s"


class _Context(logging.Filter):
    def __init__(self, project: str) -> None:
        super().__init__()
        self.hostname = socket.gethostname()
        self.project = project

    def filter(self, record: logging.LogRecord) -> bool:
        record.hostname = self.hostname
        record.project = self.project
        return True


def setup_logging(settings: Settings, console: bool = True, level: str | None = None) -> None:
    """Send dirt's log to stderr and to the log file named in dirt.toml."""
    logger = logging.getLogger("dirt")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level or settings.log.level)
    logger.propagate = False
    context = _Context(settings.name)
    formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = []
    if console:
        handlers.append(logging.StreamHandler(sys.stderr))
    if settings.log_path is not None:
        settings.log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(settings.log_path, encoding="utf-8"))
    for handler in handlers:
        handler.addFilter(context)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
