"""The store side of the CouchDB surface, on SQLite and PostgreSQL: revisions kept by triggers,
keyset pages in code-point order, counts without scans."""

from __future__ import annotations

from dirt.couch.revs import Position
from dirt.couch.store import CouchStore
from dirt.service import Service

IDS = ["B", "a", "Z", "é", "_x", "a-1", "a1", "~"]


def test_every_write_to_a_row_is_a_new_revision(store: Service) -> None:
    couch = CouchStore(store)
    store.submit_tasks("r1", ["examples.simple"])
    task_id = store.record_detail("r1").tasks[0].id
    first = couch.get(task_id)
    assert first is not None and first.row.revision == 1
    store.save_node("n1", {"cpu_count": 1})
    assert store.dispatch([], [], [task_id]) == ([], [task_id])  # reserved: a write to the row
    store.release([task_id])
    store.cancel_task(task_id)
    now = couch.get(task_id)
    assert now is not None and now.row.revision == 4
    assert couch.known(now.row, first.rev) == 1 and couch.known(now.row, "1-" + "0" * 32) is None
    record = couch.get("r1")
    assert record is not None and record.row.revision == 1


def test_all_docs_in_code_point_order_on_every_backend(store: Service) -> None:
    store.submit([{"_id": i, "type": "record"} for i in IDS if not i.startswith("_")])
    couch = CouchStore(store)
    expected = sorted(i for i in IDS if not i.startswith("_"))

    def page(start: str | None, limit: int, skip: int = 0) -> list[str]:
        docs, _, _ = couch.all_docs(
            start=start,
            end=None,
            inclusive_end=True,
            descending=False,
            limit=limit,
            skip=skip,
            full=False,
        )
        return [d.row.id for d in docs]

    assert page(None, 100) == expected
    walked, start, skip = [], None, 0
    while batch := page(start, 2, skip):
        walked += batch
        start, skip = batch[-1], 1
    assert walked == expected
    _, total, offset = couch.all_docs(
        start="a", end=None, inclusive_end=True, descending=False, limit=1, skip=0, full=False
    )
    assert (total, offset) == (len(expected), expected.index("a"))


def test_changes_resume_inside_one_transaction(store: Service) -> None:
    store.submit_tasks("r1", ["examples.simple"] * 5)
    couch = CouchStore(store)
    seen, position = [], Position(0)
    while True:
        page = couch.changes(position, 2, None, False)
        seen += [d.row.id for d in page.docs]
        if not page.docs:
            break
        position = page.last
    assert len(seen) == 6 == len(set(seen)) and seen[0] == "r1"
    assert couch.info()[0] == 6
