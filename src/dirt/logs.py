"""Log lines to the console and the project's log file, with time, host and project."""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Sequence

from dirt.config import Settings

FORMAT = "%(asctime)s %(hostname)s %(project)s %(levelname)s %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


class _Context(logging.Filter):
    def __init__(self, project: str) -> None:
        super().__init__()
        self.hostname = socket.gethostname()
        self.project = project

    def filter(self, record: logging.LogRecord) -> bool:
        record.hostname = self.hostname
        record.project = self.project
        return True


class _Formatter(logging.Formatter):
    """FORMAT, with each record's line made once for all handlers and the time once a second:
    the dispatcher logs two lines per task, thousands of times a second."""

    def __init__(self) -> None:
        super().__init__(FORMAT, datefmt=DATEFMT)
        self._stamp = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        stamp = self._stamp  # one read: another thread may replace it meanwhile
        if stamp[0] != second:
            stamp = (second, time.strftime(DATEFMT, self.converter(second)))
            self._stamp = stamp
        return stamp[1]

    def format(self, record: logging.LogRecord) -> str:
        text = record.__dict__.get("dirt_text")
        if text is None:
            text = super().format(record)
            if record.__dict__.get("dirt_lines"):
                # Several lines in one record (see info_lines): each gets the prefix.
                prefix = text[: len(text) - len(record.message)]
                text = prefix + record.message.replace("\n", "\n" + prefix)
            record.__dict__["dirt_text"] = text
        return str(text)


def info_lines(logger: logging.Logger, lines: Sequence[str]) -> None:
    """Log `lines` at INFO as they would be one by one, in one record: the dispatcher logs two
    lines per task, and a record costs far more than a line."""
    if lines and logger.isEnabledFor(logging.INFO):
        logger.info("%s", "\n".join(lines), extra={"dirt_lines": True})


def setup_logging(settings: Settings, console: bool = True, level: str | None = None) -> None:
    """Send dirt's log to stderr and to the log file named in dirt.toml."""
    logger = logging.getLogger("dirt")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level or settings.log.level)
    logger.propagate = False
    context = _Context(settings.name)
    formatter = _Formatter()
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
