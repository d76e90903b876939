"""The dispatcher end to end on real local nodes (execnet popen gateways), in-process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import RunningDispatcher, wait_finished, wait_for


def submit(
    service: Service, *names: str, kwargs: dict[str, Any] | None = None, record: str = "r1"
) -> list[str]:
    submission = service.submit_tasks(record, list(names), kwargs=kwargs)
    return [t.id for t in submission.tasks]


def run(service: Service, *names: str, **options: Any) -> list[Any]:
    return wait_finished(service, submit(service, *names, **options))


def test_the_examples_succeed_with_results_node_and_provenance(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    project: Path,
) -> None:
    simple, arguments = run(
        service, "examples.simple", "examples.arguments", kwargs={"cat": "meow", "dog": "woof"}
    )
    assert simple.state is TaskState.SUCCEEDED and simple.results == {"success": True}
    assert arguments.results == {"success": True, "cat": "meow", "dog": "woof"}
    source = (project / "tasks/examples/simple.py").read_bytes()
    assert simple.module_sha256 == hashlib.sha256(source).hexdigest()
    assert simple.node == "local"
    assert simple.started <= simple.completed


def test_attachments_are_stored_apart_and_linked_from_the_results(
    isolation: str, local_node: str, dispatcher: RunningDispatcher, service: Service
) -> None:
    (task,) = run(service, "examples.attachments")
    assert task.results["attachments"] == [
        {
            "filename": "build.log",
            "link_name": "Build log",
            "size": task.results["attachments"][0]["size"],
        }
    ]
    stored = service.attachment(task.id, "build.log")
    assert stored.content.decode().endswith("all good\n")
    assert (stored.content_type, stored.link_name) == ("text/plain", "Build log")


def test_a_plain_execute_module_runs(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module("plain", "def execute(n=1):\n    return {'success': n == 2, 'n': n}\n")
    (task,) = run(service, "plain", kwargs={"n": 2})
    assert task.state is TaskState.SUCCEEDED and task.results == {"success": True, "n": 2}


def test_a_module_deleted_after_submission_fails_as_not_found(
    local_node: str,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module("gone", "def execute():\n    return {'success': True}\n")
    (task_id,) = submit(service, "gone")
    (service.settings.tasks_dir / "gone.py").unlink()
    running = RunningDispatcher(service)
    try:
        (task,) = wait_finished(service, [task_id])
    finally:
        running.stop()
    assert task.state is TaskState.FAILED
    assert task.reason.startswith("task module gone not found")


def test_a_raising_module_fails_with_the_remote_traceback(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module("boom", "def execute():\n    raise ValueError('no disk')\n")
    (task,) = run(service, "boom")
    assert task.state is TaskState.FAILED
    assert "Traceback" in task.reason and "ValueError: no disk" in task.reason


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return 42", "task returned 42; expected a dict with a boolean 'success'"),
        ("return {'success': 'yes'}", "expected a dict with a boolean 'success'"),
        ("return {'success': True, 'x': b'raw'}", "results not JSON-serialisable"),
        ("return {'success': True, 'x': object()}", "not serialisable"),
        ("return {'success': False, 'reason': 'tests failed'}", "tests failed"),
    ],
)
def test_bad_results_fail_with_a_reason(
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
    body: str,
    expected: str,
) -> None:
    add_task_module("bad", f"def execute():\n    {body}\n")
    (task,) = run(service, "bad")
    assert task.state is TaskState.FAILED
    assert expected in task.reason


def test_a_task_whose_process_exits_fails_with_the_exit_code(
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module("quit", "import os\ndef execute():\n    os._exit(3)\n")
    (task,) = run(service, "quit")
    assert task.state is TaskState.FAILED and "exited with code 3" in task.reason


def test_a_killed_task_fails_and_its_neighbour_is_untouched(
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module(
        "slow", "import time\ndef execute():\n    time.sleep(0.5)\n    return {'success': True}\n"
    )
    add_task_module(
        "die",
        "import os, signal, time\ndef execute():\n    time.sleep(0.1)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    slow, die = run(service, "slow", "die")
    assert slow.state is TaskState.SUCCEEDED
    assert die.state is TaskState.FAILED and "SIGKILL" in die.reason
    assert service.node("local").online
    (after,) = run(service, "examples.simple")
    assert after.state is TaskState.SUCCEEDED


def test_sys_exit_fails_the_task_not_the_node(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module("bye", "import sys\ndef execute():\n    sys.exit(4)\n")
    (task,) = run(service, "bye")
    assert task.state is TaskState.FAILED and "sys.exit(4)" in task.reason
    (after,) = run(service, "examples.simple")
    assert after.state is TaskState.SUCCEEDED


def test_chdir_and_globals_do_not_leak_between_tasks(
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module(
        "dirty",
        "import os, json\ndef execute():\n    os.chdir('/')\n"
        "    json.LEAKED = True\n    return {'success': True}\n",
    )
    add_task_module(
        "check",
        "import os, json\ndef execute():\n"
        "    return {'success': True, 'cwd': os.getcwd(),"
        " 'leak': hasattr(json, 'LEAKED')}\n",
    )
    run(service, "dirty")
    (check,) = run(service, "check")
    assert check.results["leak"] is False and check.results["cwd"] != "/"


def test_never_more_tasks_than_slots_run_at_once(
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module(
        "span",
        "import time\ndef execute():\n    start = time.time()\n"
        "    time.sleep(0.15)\n"
        "    return {'success': True, 'span': [start, time.time()]}\n",
    )
    tasks = run(service, *["span"] * 6)
    spans = [t.results["span"] for t in tasks]
    most = max(sum(1 for s, e in spans if s <= point < e) for point, _ in spans)
    assert most == 2


def test_tasks_go_round_robin_over_nodes(
    service: Service,
    add_task_module: Callable[[str, str], str],
    tmp_path: Path,
) -> None:
    from dirt.dispatch.runner import probe

    info = probe("local", service.settings.nodes)
    service.save_node("local", info, slots=1)
    service.save_node("localhost", info, slots=1)
    # Each task waits until all have started: with one slot per node they can only all
    # succeed when each node runs one of them at the same time.
    add_task_module(
        "together",
        "import os, time, uuid\n"
        "def execute(folder, count):\n"
        "    open(os.path.join(folder, uuid.uuid4().hex), 'w').close()\n"
        "    deadline = time.time() + 20\n"
        "    while len(os.listdir(folder)) < count and time.time() < deadline:\n"
        "        time.sleep(0.01)\n"
        "    return {'success': len(os.listdir(folder)) >= count}\n",
    )
    started = tmp_path / "started"
    started.mkdir()
    running = RunningDispatcher(service)
    try:
        tasks = run(service, "together", "together", kwargs={"folder": str(started), "count": 2})
    finally:
        running.stop()
    assert all(t.state is TaskState.SUCCEEDED for t in tasks)
    assert sorted(t.node for t in tasks) == ["local", "localhost"]


def test_a_lost_node_is_marked_offline_and_its_task_runs_elsewhere(
    service: Service,
    add_task_module: Callable[[str, str], str],
    tmp_path: Path,
) -> None:
    from dirt.dispatch.runner import probe

    info = probe("local", service.settings.nodes)
    service.save_node("local", info, slots=1)
    service.save_node("localhost", info, slots=1)
    marker = tmp_path / "started"
    add_task_module(
        "long",
        "import os, time\n"
        "def execute(marker):\n"
        "    with open(marker, 'a') as f:\n"
        "        f.write(str(os.getpid()) + '\\n')\n"
        "    time.sleep(1.0)\n"
        "    return {'success': True}\n",
    )
    running = RunningDispatcher(service)
    try:
        (task_id,) = submit(service, "long", kwargs={"marker": str(marker)})
        wait_for(lambda: marker.exists(), what="the task to start")
        # Its start is written at the loop's next step, which may come after the marker.
        first = wait_for(lambda: service.task(task_id).node, what="the start to be stored")
        state = running.dispatcher.nodes[first]
        os.kill(state.connection.agent_info["pid"], signal.SIGKILL)
        (task,) = wait_finished(service, [task_id])
        assert task.state is TaskState.SUCCEEDED
        assert task.node != first and task.attempts == 2
        lost = service.node(first)
        assert not lost.online and lost.enabled and lost.last_error
        detail = service.record_detail("r1")
        assert [a.outcome for a in detail.attempts[task_id]] == ["lost", "succeeded"]
    finally:
        running.stop()


def test_a_submission_starts_within_100_ms_on_an_idle_server(
    local_node: str, dispatcher: RunningDispatcher, service: Service
) -> None:
    run(service, "examples.simple")  # the node's connection is up and warm
    delays = []
    for _ in range(5):
        time.sleep(0.1)
        submitted = time.time()
        (task_id,) = submit(service, "examples.simple")
        (task,) = wait_finished(service, [task_id])
        delays.append(task.started - submitted)
    assert sorted(delays)[2] < 0.1, delays


def test_log_lines_name_task_node_and_attachment(
    local_node: str, service: Service, project: Path
) -> None:
    from dirt.logs import setup_logging

    service.settings.log.file = "dirt.log"
    setup_logging(service.settings, console=False)
    running = RunningDispatcher(service)
    try:
        (task,) = run(service, "examples.attachments")
    finally:
        running.stop()
    text = (project / "dirt.log").read_text()
    assert f"{task.id} -> local" in text
    assert f"Task {task.id} pushed to db" in text
    assert f"Task {task.id}: file build.log attached" in text
    assert f" {service.settings.name} INFO " in text


def test_results_json_matches_the_document_format(
    local_node: str, dispatcher: RunningDispatcher, service: Service
) -> None:
    (task,) = run(service, "examples.simple")
    doc = task.to_doc()
    assert json.loads(json.dumps(doc))["results"] == {"success": True}
    assert {"_id", "type", "record_id", "name", "started", "completed", "node"} <= set(doc)


def test_an_urgent_task_does_not_queue_behind_the_prefetched_ones(
    service: Service, add_task_module: Callable[[str, str], str]
) -> None:
    from dirt.dispatch.runner import probe

    service.save_node("local", probe("local", service.settings.nodes), slots=1)
    add_task_module(
        "nap", "import time\ndef execute():\n    time.sleep(0.05)\n    return {'success': True}\n"
    )
    running = RunningDispatcher(service)
    try:
        routine = submit(service, *["nap"] * 20)
        wait_for(
            lambda: any(t.state is TaskState.RUNNING for t in service.tasks(routine)),
            what="the routine tasks to start",
        )
        urgent = service.submit_tasks("r2", ["nap"], priority=10).tasks[0].id
        tasks = wait_finished(service, [*routine, urgent])
    finally:
        running.stop()
    urgent_start = next(t.started for t in tasks if t.id == urgent)
    later = [t for t in tasks if t.id != urgent and t.started > urgent_start]
    assert len(later) >= 15


def test_a_tasks_output_is_kept_with_it(
    isolation: str,
    local_node: str,
    dispatcher: RunningDispatcher,
    service: Service,
    add_task_module: Callable[[str, str], str],
) -> None:
    add_task_module(
        "chatty",
        "import sys\ndef execute():\n    print('compiling foo.c')\n"
        "    print('warning: bar', file=sys.stderr)\n"
        "    return {'success': True}\n",
    )
    (task,) = run(service, "chatty")
    assert "compiling foo.c" in task.output and "warning: bar" in task.output
