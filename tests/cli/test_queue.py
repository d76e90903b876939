"""`dirt queue`: per record its share, waiting and running tasks; and who dispatches."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.cli.conftest import serve
from tests.cli.test_cli import dirt_ok
from tests.conftest import add_local_node, run_dirt, wait_for


def test_the_queue_lists_records_oldest_first_with_their_share(cli_project: Path) -> None:
    dirt_ok("submit", "nightly", "-t", "examples.simple", "-t", "examples.simple", cwd=cli_project)
    dirt_ok("submit", "ci", "-t", "examples.simple", "--share", "3", cwd=cli_project)
    shown = json.loads(dirt_ok("queue", "--json", cwd=cli_project))
    assert [(r["record_id"], r["share"], r["waiting"]) for r in shown["queue"]] == [
        ("nightly", 1, 2),
        ("ci", 3, 1),
    ]
    assert (shown["order"], shown["records"], shown["waiting"], shown["running"]) == (
        "fair",
        2,
        3,
        0,
    )
    assert shown["dispatchers"] == [] and "none has run on this store yet" in shown["no_dispatcher"]
    text = dirt_ok("queue", cwd=cli_project)
    assert "order: fair; no dispatcher is running" in text
    assert "nightly" in text and "ci" in text and "2 record(s) in the queue: 3 waiting" in text


def test_a_share_out_of_range_is_a_usage_error(cli_project: Path) -> None:
    result = run_dirt("submit", "r", "-t", "examples.simple", "--share", "0", cwd=cli_project)
    assert result.returncode == 2 and "--share" in result.stderr


def test_the_queue_names_the_running_dispatcher_and_empties(cli_project: Path) -> None:
    add_local_node(cli_project, slots=2)
    dirt_ok("submit", "r1", "-t", "examples.simple", cwd=cli_project)
    server = serve(cli_project)
    try:
        wait_for(
            lambda: json.loads(dirt_ok("queue", "--json", cwd=cli_project))["records"] == 0,
            30,
            what="the queue to empty",
        )
        shown = json.loads(dirt_ok("queue", "--json", cwd=cli_project))
        assert [d["order"] for d in shown["dispatchers"]] == ["fair"]
        assert shown["no_dispatcher"] is None
        assert "nothing waits or runs" in dirt_ok("queue", cwd=cli_project)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert (
        "none seen for" in json.loads(dirt_ok("queue", "--json", cwd=cli_project))["no_dispatcher"]
    )
