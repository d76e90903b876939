"""`dirt watch DIR -t TASK`: a record per new file of a folder (data processing)."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from dirt.cli.base import Context, out

if TYPE_CHECKING:
    from dirt.service import Taken
    from dirt.sources.watch import NewFile


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option(
    "-t", "--task", "tasks", multiple=True, required=True, help="A task name; repeat for more."
)
@click.option(
    "--pattern",
    default="*",
    show_default=True,
    help="Files to take: a glob of the file name (or of the path under FOLDER, when it has /).",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.05),
    default=5.0,
    show_default=True,
    help="Seconds between looks; a file is taken when two looks in a row find it unchanged.",
)
@click.option(
    "--min-age",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds a file must be unchanged for, besides two looks.",
)
@click.option(
    "--once", is_flag=True, help="Look twice (--interval apart), take what is ready, exit."
)
@click.pass_obj
def watch(
    obj: Context,
    folder: str,
    tasks: tuple[str, ...],
    pattern: str,
    interval: float,
    min_age: float,
    once: bool,
) -> None:
    """A record per new file in FOLDER (and its subfolders) with the tasks -t, each with the
    kwargs {"path"}; the record has the fields path, size and sha256. Runs until Ctrl-C. A file
    is taken once it stops growing, and never twice (the store remembers it across restarts);
    hidden files are skipped.

    \b
    dirt watch /data/incoming -t physics.analyse --pattern '*.root'
    """
    from dirt.logs import setup_logging
    from dirt.sources.watching import FolderWatcher

    setup_logging(obj.settings)

    def taken(item: NewFile, result: Taken) -> None:
        for record in result.records:
            out.print(escape(f"record {record.id} added: {item.path} ({item.size} bytes)"))

    watcher = FolderWatcher(
        obj.service, folder, tasks, pattern=pattern, min_age=min_age, on_taken=taken
    )
    stop = threading.Event()
    if once:
        watcher.look()
        stop.wait(interval)
        watcher.look()
        return

    def stopping(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, stopping)
    signal.signal(signal.SIGTERM, stopping)
    out.print(escape(f"watching {watcher.folder} for {pattern}; Ctrl-C stops"))
    watcher.run(stop, interval)
    out.print("stopped")
