"""The web's store functions on SQLite and PostgreSQL: trigger-kept counts, feed, tokens."""

from __future__ import annotations

from dirt.models import TaskState
from dirt.service import Service
from tests.web.conftest import finish_task, run_task, seed_docs

SIMPLE_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc95a4"
ATTACH_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc9858"


def test_counts_follow_every_state_change(store: Service) -> None:
    store.submit(seed_docs())
    store.save_node("n1", {"cpu_count": 2})

    def with_state(state: str) -> list[str]:
        return [s.record.id for s in store.record_page(50, None, state)]

    assert with_state("waiting") == ["r124", "r123"]
    run_task(store, SIMPLE_R123, "n1")
    run_task(store, ATTACH_R123, "n1")
    assert with_state("running") == ["r123"]
    assert with_state("waiting") == ["r124"]
    finish_task(store, SIMPLE_R123, "n1", TaskState.FAILED, reason="x")
    finish_task(store, ATTACH_R123, "n1")
    assert with_state("running") == []
    assert with_state("failed") == ["r123"]
    summary = {s.record.id: s.counts for s in store.record_page()}
    assert summary["r123"]["failed"] == 1 and summary["r123"]["succeeded"] == 1
    assert store.metrics()["tasks"] == {
        "waiting": 1,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
    }
    store.retry_task(SIMPLE_R123)
    assert with_state("failed") == []
    assert with_state("waiting") == ["r124", "r123"]
    page = store.record_page(1)
    assert [s.record.id for s in store.record_page(5, (page[0].record.created, "r124"))] == ["r123"]


def test_feed_and_tokens(store: Service) -> None:
    start = store.current_seq()
    store.submit(seed_docs())
    changes, last = store.changes_since(start)
    assert {c.id for c in changes if c.type == "record"} == {"r123", "r124"}
    assert last == store.current_seq()
    assert store.changes_since(last) == ([], last)
    token = store.create_token("t")
    assert store.verify_token(token) == "t"
    assert store.verify_token(token + "x") is None
    assert [t.name for t in store.tokens()] == ["t"]
