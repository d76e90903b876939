"""NodeConnection lifecycle and the sysinfo probe."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import execnet
import pytest

from dirt.dispatch.connection import NodeConnection, NodeLostError, popen_spec
from dirt.remote import source

if TYPE_CHECKING:
    # The conftest here and tests/conftest.py share a module name: import for types only.
    from conftest import Collector, Node

SYSINFO_KEYS = {
    "cpu_count",
    "platform",
    "architecture",
    "environ",
    "path",
    "version_info",
    "pythonpath",
    "hostname",
    "fqdn",
    "ip",
    "system",
    "python",
    "python_version",
    "memory_total",
    "load",
    "release",
}


def test_sysinfo_has_the_original_keys_and_more(process_node: Node) -> None:
    info = process_node.conn.sysinfo()
    assert set(info) >= SYSINFO_KEYS
    assert info["cpu_count"] >= 1
    assert isinstance(info["environ"], dict)
    assert isinstance(info["path"], list)
    assert info["version_info"][:2] == list(__import__("sys").version_info[:2])
    assert info["memory_total"] > 0
    assert len(info["load"]) == 3
    assert isinstance(info["ip"], str)


def test_open_fails_readably_for_a_missing_python(collector: Collector) -> None:
    conn = NodeConnection(
        popen_spec("/nonexistent/python3"), "process", collector.on_done, collector.on_lost
    )
    with pytest.raises(NodeLostError, match="could not reach"):
        conn.open(timeout=10)
    conn.close()
    assert collector.lost == []


def test_unknown_isolation_is_rejected(collector: Collector) -> None:
    with pytest.raises(ValueError, match="isolation"):
        NodeConnection(popen_spec(), "vm", collector.on_done, collector.on_lost)


def test_close_is_idempotent_and_not_lost(make_node: Callable[[str], Node]) -> None:
    node = make_node("process")
    assert node.conn.alive
    node.conn.close()
    node.conn.close()
    assert not node.conn.alive
    assert node.collector.lost == []


def test_run_after_close_raises(make_node: Callable[[str], Node]) -> None:
    node = make_node("thread")
    node.conn.close()
    with pytest.raises(NodeLostError):
        node.start("def execute():\n    return {'success': True}\n")


def test_close_kills_running_tasks(make_node: Callable[[str], Node]) -> None:
    node = make_node("process")
    node.start("import time\ntime.sleep(60)\n")
    node.conn.close(timeout=10)
    assert not node.conn.alive


def test_unsendable_kwargs_raise_type_error(thread_node: Node) -> None:
    src = "def execute(**kw):\n    return {'success': True}\n"
    sha = hashlib.sha256(src.encode()).hexdigest()
    with pytest.raises(TypeError):
        thread_node.conn.run("bad", "tests.task", src, sha, {"x": object()}, None)
    assert thread_node.conn.in_flight == set()
    assert thread_node.run(src).results == {"success": True}


def agent_answer(forkserver_source: str) -> tuple[str, str]:
    """The first message of an agent given this fork server source (it should be fatal)."""
    group = execnet.Group()
    try:
        gw = group.makegateway(popen_spec())
        channel = gw.remote_exec(source("agent"))
        channel.send({"isolation": "process", "forkserver_source": forkserver_source})
        kind, message = channel.receive(30)
        channel.waitclose(30)
    finally:
        group.terminate(10)
    return kind, message


def test_agent_reports_fatal_when_forkserver_cannot_start() -> None:
    kind, message = agent_answer("raise SystemExit(7)\n")
    assert kind == "fatal"
    assert "fork server did not start: exit code 7" in message


def test_agent_reports_fatal_when_forkserver_source_does_not_compile() -> None:
    # The agent compiles the fork server (see protocol.compiled): its error is the agent's.
    kind, message = agent_answer("def broken(:\n")
    assert kind == "fatal"
    assert "fork server source does not compile" in message
    assert "line 1" in message
