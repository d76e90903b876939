"""`dirt demo`: the original's sample records processed by this machine, step by step."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from dirt.config import CONFIG_FILE, load_settings
from dirt.dispatch.loop import Dispatcher
from dirt.dispatch.runner import probe
from dirt.errors import NotFoundError
from dirt.logs import setup_logging
from dirt.project import create_project
from dirt.server import serve
from dirt.service import Service

ARGUMENTS_TASK_ID = uuid.uuid5(uuid.NAMESPACE_URL, "dirt-demo/examples.arguments").hex


def demo_documents() -> list[dict[str, Any]]:
    """The seed's sample records and tasks, plus a task that takes arguments."""
    seed = resources.files("dirt") / "seed" / "test_data.json"
    docs: list[dict[str, Any]] = json.loads(seed.read_text(encoding="utf-8"))
    docs.append(
        {
            "_id": ARGUMENTS_TASK_ID,
            "type": "task",
            "record_id": "r123",
            "name": "examples.arguments",
            "kwargs": {"cat": "meow", "dog": "woof"},
            "platform": "linux",
            "created": 1315347385,
        }
    )
    return docs


def run_demo(
    directory: Path,
    *,
    once: bool = False,
    isolation: str | None = None,
    say: Callable[[str], None] = print,
    web: bool = True,
    port: int | None = None,
) -> int:
    if (directory / CONFIG_FILE).is_file():
        say(f"1. Reusing the demo project in {directory.resolve()}")
    else:
        create_project(directory)
        say(f"1. Made the demo project {directory.resolve()} (dirt.toml, tasks/examples/)")
    overrides = {"dispatch": {"isolation": isolation}} if isolation else None
    settings = load_settings(directory, overrides=overrides)
    setup_logging(settings, level="WARNING")
    service = Service(settings)
    say(f"2. Store: {settings.database_url}")
    say("3. Probing this machine as node 'local' (a local process, no SSH)")
    sys_info = probe("local", settings.nodes)
    node = service.save_node("local", sys_info)
    say(
        f"   local: {sys_info.get('hostname')} {sys_info.get('system')} "
        f"{sys_info.get('architecture')}, {node.slots} slot(s)"
    )
    docs = demo_documents()
    ids = [d["_id"] for d in docs]
    new = _unstored(service, docs)
    if new:
        service.submit(new)
        say(f"4. Submitted the sample records r123 and r124 with {len(ids) - 2} tasks")
    else:
        say("4. The sample records are already stored; running what still waits")
    task_ids = [d["_id"] for d in docs if d["type"] == "task"]
    setup_logging(settings)
    say(
        "5. Serving: tasks go to 'local' as slots free up. Ctrl-C stops"
        + (" (or wait: --once stops when they are done)" if once else "")
    )
    watcher = threading.Thread(
        target=_report_when_done, args=(service, task_ids, once, say), daemon=True
    )

    def on_ready(dispatcher: Dispatcher) -> None:
        watcher.dispatcher = dispatcher  # type: ignore[attr-defined]
        watcher.start()

    def on_web(url: str) -> None:
        say(f"   Web page: {url}")

    return serve(service, on_ready=on_ready, web=web, port=port, fallback_port=True, on_web=on_web)


def _unstored(service: Service, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents of `docs` the store does not hold yet (a rerun adds only what is new)."""
    stored_tasks = {t.id for t in service.tasks(d["_id"] for d in docs if d["type"] == "task")}
    new = []
    for doc in docs:
        if doc["type"] == "task":
            if doc["_id"] not in stored_tasks:
                new.append(doc)
            continue
        try:
            service.record(doc["_id"])
        except NotFoundError:
            new.append(doc)
    return new


def _report_when_done(
    service: Service, task_ids: list[str], once: bool, say: Callable[[str], None]
) -> None:
    dispatcher: Dispatcher = threading.current_thread().dispatcher  # type: ignore[attr-defined]
    while True:
        found = service.tasks(task_ids)
        if found and all(t.state.finished for t in found):
            break
        time.sleep(0.1)
    say("6. Done:")
    for record_id in ("r123", "r124"):
        detail = service.record_detail(record_id)
        for task in detail.tasks:
            files = ", ".join(
                f"{a.filename} ({a.size} bytes)" for a in detail.attachments.get(task.id, [])
            )
            line = f"   {record_id} {task.name:<22} {task.state.value:<10} on {task.node}"
            if task.reason:
                line += f": {task.reason.strip().splitlines()[-1]}"
            if files:
                line += f"; attached {files}"
            say(line)
    say("   See them with `dirt status r123`" + ("" if once else "; Ctrl-C to stop"))
    if once:
        dispatcher.stop()
