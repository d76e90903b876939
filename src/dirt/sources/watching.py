"""`dirt watch DIR -t TASK`: a record per new file of a folder, as long as it runs.

Every `interval` seconds the folder is scanned (`watch.FolderScanner`); each file that stopped
growing and was never taken becomes a record with its tasks, stored together with the note
that the file was taken (`Service.submit_new(..., watched=...)`), so a file is never taken
twice, across restarts and with two watchers on one folder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from dirt.errors import DirtError, NotFoundError
from dirt.sources.watch import FolderScanner, NewFile, StoreSeenFiles, file_documents

if TYPE_CHECKING:
    from dirt.service import Service, Taken

log = logging.getLogger("dirt.sources")


class FolderWatcher:
    def __init__(
        self,
        service: Service,
        folder: Path | str,
        tasks: Sequence[str],
        *,
        pattern: str = "*",
        min_age: float = 0.0,
        on_taken: Callable[[NewFile, Taken], None] | None = None,
    ) -> None:
        missing = [name for name in tasks if not service.modules.exists(name)]
        if missing:
            raise NotFoundError(
                "no task module "
                + ", ".join(f"{n!r} (tasks/{n.replace('.', '/')}.py)" for n in missing)
            )
        if not Path(folder).is_dir():
            raise NotFoundError(f"{folder} is not a folder")
        self.service = service
        self.tasks = list(tasks)
        self.scanner = FolderScanner(
            folder, StoreSeenFiles(service.engine, folder), pattern=pattern, min_age=min_age
        )
        self.on_taken = on_taken

    @property
    def folder(self) -> Path:
        return self.scanner.folder

    def look(self) -> int:
        """One scan: a record per new file. Returns how many records were made."""
        made = 0
        for item in self.scanner.scan():
            docs = file_documents(item, self.tasks)
            try:
                taken = self.service.submit_new(docs, watched=(str(self.folder), item.watched()))
            except (DirtError, SQLAlchemyError) as exc:
                # Not taken: offered again at the next scan (the store may be back by then).
                log.error("watched file %s: no record stored: %s", item.path, exc)
                self.scanner.forget(item)
                continue
            made += len(taken.records)
            if self.on_taken is not None:
                self.on_taken(item, taken)
        return made

    def run(self, stop: threading.Event, interval: float) -> None:
        """Scan every `interval` seconds until `stop` is set."""
        log.info("watching %s for %s (tasks %s)", self.folder, self.scanner.pattern, self.tasks)
        while not stop.is_set():
            try:
                self.look()
            except FileNotFoundError as exc:
                log.error("%s; looking again in %.0f s", exc, interval)
            stop.wait(interval)
