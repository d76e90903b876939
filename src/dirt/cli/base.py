"""What every command shares: the lazy project context, the consoles, error handling, times."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape

from dirt.config import Settings, load_settings
from dirt.errors import DirtError
from dirt.models import TaskState

if TYPE_CHECKING:
    from dirt.service import Service

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class Context:
    """Loads settings and opens the store only when a command needs them."""

    def __init__(self, project: str | None) -> None:
        self.project = project
        self._settings: Settings | None = None
        self._service: Service | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.project)
        return self._settings

    @property
    def service(self) -> Service:
        if self._service is None:
            # Imported here: `dirt --help` and `dirt create` need no store, so they stay quick.
            from dirt.service import Service

            self._service = Service(self.settings)
        return self._service


class DirtGroup(click.Group):
    """Turns a DirtError anywhere into a clear message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DirtError as exc:
            # escape: messages name TOML tables ([nodes.hosts."build1"]), not rich markup
            message = escape(str(exc))
            err.print(
                f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True
            )
            sys.exit(2)


# ---- how states and times look in a terminal -------------------------------------------------

# rich styles; a state missing here (a new one) is shown unstyled, never dropped.
STATE_STYLES: dict[TaskState, str] = {
    TaskState.WAITING: "dim",
    TaskState.RUNNING: "blue",
    TaskState.SUCCEEDED: "green",
    TaskState.FAILED: "red",
    TaskState.CANCELLED: "yellow",
}


def styled_state(state: TaskState, text: str | None = None) -> str:
    style = STATE_STYLES.get(state)
    shown = escape(text if text is not None else state.value)
    return f"[{style}]{shown}[/]" if style else shown


def when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def ago(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    seconds = max(0, time.time() - epoch)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return when(epoch)
