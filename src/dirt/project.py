"""Projects on disk: make one from the skeleton, resolve task names to files under tasks/."""

from __future__ import annotations

import hashlib
import keyword
import os
import shutil
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dirt.errors import InputError, NotFoundError, ProjectExistsError

TEMPLATE_SUFFIX = ".tmpl"


def create_project(path: Path | str, name: str | None = None, db_name: str | None = None) -> Path:
    """Make a project folder from the skeleton; refuse to touch an existing one."""
    target = Path(path)
    name = name or target.name
    if target.exists():
        raise ProjectExistsError(
            f"{target} already exists; dirt create never touches an existing folder: "
            "pick another name or remove it first"
        )
    if not valid_project_name(name):
        raise InputError(
            f"{name!r} is not a usable project name: use letters, digits, '-', '_' and '.'"
        )
    skeleton = resources.files("dirt") / "skeleton"
    staging = target.with_name(f".{target.name}.creating")
    shutil.rmtree(staging, ignore_errors=True)
    with resources.as_file(skeleton) as skeleton_dir:
        shutil.copytree(
            skeleton_dir, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    values = {"name": name, "database": db_name or name}
    for template in staging.rglob(f"*{TEMPLATE_SUFFIX}"):
        text = template.read_text(encoding="utf-8")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        template.with_suffix("").write_text(text, encoding="utf-8")
        template.unlink()
    # Renaming a finished folder into place means a failure never leaves half a project.
    staging.rename(target)
    return target


def valid_project_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and name[0] != "."


def valid_task_name(name: object) -> bool:
    """Task names are dotted Python identifiers, nothing else."""
    if not isinstance(name, str) or not name:
        return False
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in name.split("."))


@dataclass(frozen=True)
class TaskModule:
    """A task module as it is shipped: its bytes, never decoded here (the node compiles them,
    honouring a PEP 263 coding line as Python's import does)."""

    name: str
    path: Path
    source: bytes
    sha256: str


class TaskModules:
    """The task modules of one project, read from disk and cached until the file changes."""

    def __init__(self, tasks_dir: Path) -> None:
        self.tasks_dir = Path(tasks_dir).resolve()
        self._cache: dict[str, tuple[tuple[int, int], TaskModule]] = {}
        self._paths: dict[str, Path] = {}
        self._lock = threading.Lock()

    def path_of(self, name: str) -> Path:
        # Remembered per name: the dispatcher asks for every task it starts.
        path = self._paths.get(name)
        if path is None:
            if not valid_task_name(name):
                raise NotFoundError(f"task name {name!r} is not a dotted Python identifier")
            path = self.tasks_dir.joinpath(*name.split(".")).with_suffix(".py")
            self._paths[name] = path
        return path

    def exists(self, name: str) -> bool:
        if not valid_task_name(name):
            return False
        path = self.path_of(name)
        return path.is_file() and path.resolve().is_relative_to(self.tasks_dir)

    def load(self, name: str) -> TaskModule:
        """The module's current bytes and their SHA-256; NotFoundError when the file is gone,
        OSError when it cannot be read."""
        path = self.path_of(name)
        try:
            stat = os.stat(path)
        except OSError:
            raise NotFoundError(f"task module {name} not found (expected {path})") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(name)
        if cached and cached[0] == stamp:
            return cached[1]
        if not path.resolve().is_relative_to(self.tasks_dir):
            raise NotFoundError(f"task module {name} not found: {path} leaves {self.tasks_dir}")
        raw = path.read_bytes()
        module = TaskModule(name, path, raw, hashlib.sha256(raw).hexdigest())
        with self._lock:
            self._cache[name] = (stamp, module)
        return module
