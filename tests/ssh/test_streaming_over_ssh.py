"""Output and attachments from SSH nodes: output readable while the task runs, attachments by
path and by contents downloaded with the task's own sha256, the same bytes from two hosts
stored once, a host killed in the middle of an upload."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_finished, wait_for
from tests.dispatch.test_streaming import (  # noqa: F401  (fifo: a fixture)
    FIFO_THEN_FILE,
    blob_files,
    fifo,
    wait_half_way,
)
from tests.ssh.conftest import add_node
from tests.ssh.sshd import Fleet

pytestmark = pytest.mark.ssh

MiB = 1 << 20

STREAMS = """\
import hashlib, os, time

def execute(path, seed, gate):
    print("started on", os.environ.get("DIRT_TEST_HOST"), flush=True)
    while not os.path.exists(gate):  # until the test has read the line above
        time.sleep(0.05)
    data = hashlib.sha256(seed.encode()).digest() * (16 * (1 << 20) // 32)
    with open(path, "wb") as fh:
        fh.write(data)
    contents = os.urandom(3 * (1 << 20))
    return {
        "success": True,
        "sha": {"data.bin": hashlib.sha256(data).hexdigest(),
                "contents.bin": hashlib.sha256(contents).hexdigest()},
        "attachments": [{"filename": "data.bin", "path": path},
                        {"filename": "contents.bin", "contents": contents}],
    }
"""


@pytest.fixture
def running(
    service: Service, add_task_module: Callable[[str, str], str]
) -> Iterator[RunningDispatcher]:
    add_task_module("t.streams", STREAMS)
    dispatcher = RunningDispatcher(service)
    yield dispatcher
    dispatcher.stop()


def downloaded_sha(service: Service, task_id: str, filename: str) -> str:
    with service.open_attachment(task_id, filename) as opened:
        return hashlib.sha256(opened.file.read()).hexdigest()


def test_output_and_attachments_stream_from_ssh_nodes(
    service: Service, running: RunningDispatcher, tmp_path: Path
) -> None:
    add_node(service, "node-a", slots=1)
    add_node(service, "node-b", slots=1)
    gate = tmp_path / "gate"
    tasks = [
        t.id
        for t in service.submit_tasks(
            "r1",
            ["t.streams"],
            kwargs={"path": str(tmp_path / "a.bin"), "seed": "same", "gate": str(gate)},
        ).tasks
        + service.submit_tasks(
            "r1",
            ["t.streams"],
            kwargs={"path": str(tmp_path / "b.bin"), "seed": "same", "gate": str(gate)},
        ).tasks
    ]

    def both_started() -> bool:
        views = [service.task_output(t) for t in tasks]
        return all(v.data.startswith(b"started on node-") and v.live for v in views)

    wait_for(both_started, timeout=60, what="each task's first line while it runs")
    assert {service.task(t).state for t in tasks} == {TaskState.RUNNING}
    gate.write_text("")
    done = wait_finished(service, tasks, timeout=120)
    assert {t.state for t in done} == {TaskState.SUCCEEDED}, [t.reason for t in done]
    assert {t.node for t in done} == {"node-a", "node-b"}
    for task in done:
        for filename, sha in task.results["sha"].items():
            assert downloaded_sha(service, task.id, filename) == sha
    same = done[0].results["sha"]["data.bin"]
    assert same == done[1].results["sha"]["data.bin"]
    stored = sorted(p.name for p in service.blobs.root.rglob("*") if p.is_file())
    assert stored.count(same) == 1  # from two hosts, stored once
    assert len(stored) == 3


def test_a_host_killed_mid_upload_leaves_no_partial_blob_and_the_retry_uploads_again(
    service: Service,
    fleet: Fleet,
    add_task_module: Callable[[str, str], str],
    tmp_path: Path,
    fifo: tuple[Path, threading.Event],  # noqa: F811
) -> None:
    add_task_module("t.upload", FIFO_THEN_FILE)
    add_node(service, "node-a", slots=1)
    data = os.urandom(3 * MiB)
    (tmp_path / "data.bin").write_bytes(data)
    dispatcher = RunningDispatcher(service)
    try:
        (task_id,) = [
            t.id
            for t in service.submit_tasks(
                "r1",
                ["t.upload"],
                kwargs={
                    "fifo": str(fifo[0]),
                    "path": str(tmp_path / "data.bin"),
                    "marker": str(tmp_path / "first-attempt"),
                },
            ).tasks
        ]
        wait_half_way(service, timeout=60)
        fleet.servers[0].kill_all()  # node-a dies with its agent, in the middle of the upload
        add_node(service, "node-b", slots=1)
        (task,) = wait_finished(service, [task_id], timeout=60)
    finally:
        fifo[1].set()
        dispatcher.stop()
    assert task.state is TaskState.SUCCEEDED, task.reason
    attempts = service.record_detail("r1").attempts[task_id]
    assert [(a.node, a.outcome) for a in attempts] == [("node-a", "lost"), ("node-b", "succeeded")]
    expected = hashlib.sha256(data).hexdigest()
    assert downloaded_sha(service, task_id, "data.bin") == expected
    assert [p.name for p in blob_files(service)] == [expected]  # no partial blob anywhere
