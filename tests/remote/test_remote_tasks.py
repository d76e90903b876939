"""Task module contract, in both isolation modes."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # The conftest here and tests/conftest.py share a module name: import for types only.
    from conftest import Node


ORIGINAL_WITH_KWARGS = """
    def add(a, b):
        return {"success": True, "sum": a + b}

    if __name__ == '__channelexec__':
        kwargs = channel.receive()
        channel.send(add(**kwargs))
"""


def test_original_style_gets_kwargs_and_sends_results(node: Node) -> None:
    outcome = node.run(ORIGINAL_WITH_KWARGS, {"a": 2, "b": 3})
    assert outcome.error is None
    assert outcome.results == {"success": True, "sum": 5}


def test_original_style_without_kwargs(node: Node) -> None:
    outcome = node.run(
        """
        if __name__ == '__channelexec__':
            channel.send({"success": True})
        """
    )
    assert outcome.results == {"success": True}


def test_plain_execute_style(node: Node) -> None:
    outcome = node.run(
        """
        def execute(name, blob):
            return {"success": True, "greeting": "hi " + name, "blob": blob[::-1]}
        """,
        {"name": "ada", "blob": b"\x00\x01"},
    )
    assert outcome.error is None
    assert outcome.results == {"success": True, "greeting": "hi ada", "blob": b"\x01\x00"}


def test_attachment_bytes_survive(node: Node) -> None:
    outcome = node.run(
        """
        def execute():
            return {"success": True, "attachments": [
                {"filename": "x.bin", "contents": bytes(range(256)), "link_name": "x"}]}
        """
    )
    assert outcome.results["attachments"][0]["contents"] == bytes(range(256))


def test_big_results_come_back_whole(node: Node) -> None:
    # Larger than any pipe buffer or read size on the way (fork server -> agent -> master).
    outcome = node.run(
        """
        def execute(size):
            return {"success": True, "blob": bytes(range(256)) * (size // 256)}
        """,
        {"size": 8 << 20},
    )
    assert outcome.error is None
    assert outcome.results["blob"] == bytes(range(256)) * (32 << 10)


def test_many_tasks_at_once_each_get_their_own_outcome(node: Node) -> None:
    source = "def execute(n):\n    return {'success': True, 'n': n}\n"
    task_ids = {node.start(source, {"n": n}): n for n in range(50)}
    for task_id, n in task_ids.items():
        outcome = node.wait(task_id)
        assert outcome.error is None
        assert outcome.results == {"success": True, "n": n}


def test_exception_gives_traceback(node: Node) -> None:
    outcome = node.run(
        """
        def execute():
            return 1 / 0
        """,
        name="examples.broken",
    )
    assert outcome.results is None
    assert "Traceback" in outcome.error
    assert "ZeroDivisionError" in outcome.error
    assert "<dirt task examples.broken>" in outcome.error


def test_syntax_error_is_reported(node: Node) -> None:
    outcome = node.run("def execute(:\n    pass\n")
    assert "SyntaxError" in outcome.error


def test_sys_exit_is_reported(node: Node) -> None:
    outcome = node.run(
        """
        import sys
        sys.exit(4)
        """
    )
    assert outcome.error == "task called sys.exit(4)"


def test_unserialisable_results(node: Node) -> None:
    outcome = node.run(
        """
        class Thing:
            pass

        def execute():
            return {"success": True, "thing": Thing()}
        """
    )
    assert outcome.results is None
    assert outcome.error == "results not serialisable: Thing"


def test_nothing_sent_and_no_execute(node: Node) -> None:
    outcome = node.run("x = 1\n", name="examples.silent")
    assert outcome.error == "task module examples.silent sent no results and defines no execute()"


def test_first_send_wins(node: Node) -> None:
    outcome = node.run(
        """
        if __name__ == '__channelexec__':
            channel.send({"success": True, "n": 1})
            channel.send({"success": False, "n": 2})
        """
    )
    assert outcome.results == {"success": True, "n": 1}


def test_results_are_not_judged(node: Node) -> None:
    outcome = node.run("def execute():\n    return [1, 2]\n")
    assert outcome.error is None
    assert outcome.results == [1, 2]


def test_output_is_captured(node: Node) -> None:
    outcome = node.run(
        """
        import sys

        def execute():
            print("to stdout")
            print("to stderr", file=sys.stderr)
            return {"success": True}
        """
    )
    assert "to stdout" in outcome.output
    assert "to stderr" in outcome.output


def test_output_keeps_last_64k(node: Node) -> None:
    outcome = node.run(
        """
        def execute():
            print("a" * 200_000)
            print("END")
            return {"success": True}
        """
    )
    assert outcome.output.endswith("END\n")
    assert len(outcome.output.encode()) <= 64 * 1024


def test_timeout_is_reported(node: Node) -> None:
    outcome = node.run(
        """
        import time

        def execute():
            time.sleep(30)
            return {"success": True}
        """,
        timeout=0.3,
    )
    assert outcome.timed_out
    assert outcome.results is None
    assert "timed out" in outcome.error
    assert outcome.duration < 10


def test_kill_reports_killed(node: Node) -> None:
    task_id = node.start(
        """
        import time

        def execute():
            time.sleep(30)
            return {"success": True}
        """
    )
    node.conn.kill(task_id)
    outcome = node.wait(task_id)
    assert outcome.killed
    assert not outcome.timed_out
    assert outcome.results is None


def test_load_reports_averages_and_running_count(node: Node) -> None:
    task_id = node.start("import time\ntime.sleep(30)\n")
    averages, running = node.conn.load()
    assert len(averages) == 3
    assert all(isinstance(x, float) for x in averages)
    assert running == 1
    node.conn.kill(task_id)
    node.wait(task_id)


def test_in_flight_tracks_running_tasks(node: Node) -> None:
    task_id = node.start("import time\ntime.sleep(30)\n")
    assert node.conn.in_flight == {task_id}
    node.conn.kill(task_id)
    node.wait(task_id)
    assert node.conn.in_flight == set()


def test_source_sent_once_per_sha(node: Node) -> None:
    sent: list[tuple] = []
    channel = node.conn._channel
    real_send = channel.send

    def spy(message: object) -> None:
        sent.append(message)  # type: ignore[arg-type]
        real_send(message)

    channel.send = spy
    source = "def execute(n):\n    return {'success': True, 'n': n}\n"
    first = node.run(source, {"n": 1})
    second = node.run(source, {"n": 2})
    assert (first.results["n"], second.results["n"]) == (1, 2)
    runs = [m for m in sent if m[0] == "run"]
    assert [m[4] is not None for m in runs] == [True, False]


def test_gateway_death_calls_on_lost_with_in_flight(node: Node) -> None:
    gateway_pid = node.conn._gw.remote_exec("import os; channel.send(os.getpid())").receive(10)
    task_id = node.start("import time\ntime.sleep(30)\n")
    os.kill(gateway_pid, signal.SIGKILL)
    task_ids, reason = node.collector.wait_lost()
    assert task_ids == [task_id]
    assert "lost connection" in reason
    assert not node.conn.alive
