"""The CI loop's store: outbox claims, deliveries, watched files, branch outcomes; on SQLite
and a real PostgreSQL."""

from __future__ import annotations

import threading

from sqlalchemy import Engine

from dirt.db import branches, outbox
from dirt.db import sources as sources_db
from dirt.db.engine import read_transaction, write_transaction
from dirt.service import Service

NOW = 1_700_000_000.0
LEASE = 300.0


def add(engine: Engine, *items: outbox.NewNotification, now: float = NOW) -> list[int]:
    with write_transaction(engine) as conn:
        return outbox.insert_notifications(conn, list(items), now)


def note(key: str | None = None, channel: str = "email") -> outbox.NewNotification:
    return outbox.NewNotification("record.finished", channel, {"subject": "x"}, key=key)


def claim(engine: Engine, owner: str, now: float = NOW) -> list[int]:
    with write_transaction(engine) as conn:
        return [n.id for n in outbox.claim_due(conn, owner, now, LEASE)]


def row(engine: Engine, notification_id: int) -> outbox.Notification:
    with read_transaction(engine) as conn:
        found = outbox.get_notification(conn, notification_id)
    assert found is not None
    return found


def test_a_new_notification_is_due_at_once_and_claimed_once(store: Service) -> None:
    [nid] = add(store.engine, note())
    assert claim(store.engine, "a") == [nid]
    assert claim(store.engine, "b") == []
    claimed = row(store.engine, nid)
    assert (claimed.state, claimed.claimed_by, claimed.attempts) == ("sending", "a", 1)


def test_a_claim_whose_lease_ran_out_is_claimed_again(store: Service) -> None:
    [nid] = add(store.engine, note())
    claim(store.engine, "dead")
    assert claim(store.engine, "b", now=NOW + LEASE + 1) == [nid]
    assert row(store.engine, nid).attempts == 2


def test_only_the_claimer_can_finish_a_row(store: Service) -> None:
    [nid] = add(store.engine, note())
    claim(store.engine, "a")
    with write_transaction(store.engine) as conn:
        assert not outbox.mark_sent(conn, nid, "b", NOW)
        assert outbox.mark_sent(conn, nid, "a", NOW)
    assert row(store.engine, nid).state == "sent"


def test_a_row_to_retry_waits_for_its_next_try(store: Service) -> None:
    [nid] = add(store.engine, note())
    claim(store.engine, "a")
    with write_transaction(store.engine) as conn:
        assert outbox.retry_later(conn, nid, "a", "connection refused", NOW + 60) == "pending"
    assert claim(store.engine, "a", now=NOW + 59) == []
    assert claim(store.engine, "a", now=NOW + 60) == [nid]
    assert row(store.engine, nid).last_error == "connection refused"


def test_a_failed_row_is_final_and_listed(store: Service) -> None:
    [nid] = add(store.engine, note())
    claim(store.engine, "a")
    with write_transaction(store.engine) as conn:
        outbox.mark_failed(conn, nid, "a", "550 no such user", NOW)
    assert claim(store.engine, "a", now=NOW + 10**6) == []
    with read_transaction(store.engine) as conn:
        [listed] = outbox.list_notifications(conn)
    assert (listed.id, listed.state, listed.last_error) == (nid, "failed", "550 no such user")


def test_a_newer_status_supersedes_one_still_waiting(store: Service) -> None:
    [old] = add(store.engine, note("github:o/r:sha:dirt/ci.test"))
    [new] = add(store.engine, note("github:o/r:sha:dirt/ci.test"))
    assert row(store.engine, old).state == "superseded"
    assert claim(store.engine, "a") == [new]


def test_a_status_waits_while_an_older_one_with_its_key_is_in_flight(store: Service) -> None:
    [old] = add(store.engine, note("k"))
    claim(store.engine, "a")
    [new] = add(store.engine, note("k"), note("other"))[:1]
    assert new not in claim(store.engine, "b")
    with write_transaction(store.engine) as conn:
        outbox.mark_sent(conn, old, "a", NOW)
    assert claim(store.engine, "b") == [new]


def test_a_retried_status_gives_way_to_a_newer_one(store: Service) -> None:
    [old] = add(store.engine, note("k"))
    claim(store.engine, "a")
    add(store.engine, note("k"))
    with write_transaction(store.engine) as conn:
        assert outbox.retry_later(conn, old, "a", "HTTP 502", NOW + 60) == "superseded"


def test_a_stopping_sender_gives_its_claims_back(store: Service) -> None:
    [nid] = add(store.engine, note())
    claim(store.engine, "a")
    with write_transaction(store.engine) as conn:
        assert outbox.release_claims(conn, "a", NOW + 1) == 1
    assert claim(store.engine, "b", now=NOW + 1) == [nid]


def test_next_due_is_the_earliest_retry_or_lease_end(store: Service) -> None:
    first, second = add(store.engine, note(), note())
    claim(store.engine, "a")
    with write_transaction(store.engine) as conn:
        outbox.retry_later(conn, first, "a", "down", NOW + 30)
        outbox.mark_sent(conn, second, "a", NOW)
    with read_transaction(store.engine) as conn:
        assert outbox.next_due(conn) == NOW + 30


def test_two_senders_claiming_at_once_never_share_a_row(store: Service) -> None:
    add(store.engine, *[note() for _ in range(60)])
    claimed: dict[str, list[int]] = {"a": [], "b": []}

    def sender(owner: str) -> None:
        while True:
            with write_transaction(store.engine) as conn:
                got = [n.id for n in outbox.claim_due(conn, owner, NOW, LEASE, limit=3)]
            if not got:
                return
            claimed[owner].extend(got)

    threads = [threading.Thread(target=sender, args=(o,)) for o in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not set(claimed["a"]) & set(claimed["b"])
    assert len(claimed["a"]) + len(claimed["b"]) == 60


def test_failed_rows_can_be_sent_again(store: Service) -> None:
    [nid] = add(store.engine, note())
    claim(store.engine, "a")
    with write_transaction(store.engine) as conn:
        outbox.mark_failed(conn, nid, "a", "HTTP 404", NOW)
        assert outbox.requeue_failed(conn, None, NOW + 5) == 1
    assert claim(store.engine, "a", now=NOW + 5) == [nid]


def test_a_replayed_delivery_is_refused(store: Service) -> None:
    with write_transaction(store.engine) as conn:
        assert sources_db.remember_delivery(conn, "github", "72d3162e", NOW)
        assert not sources_db.remember_delivery(conn, "github", "72d3162e", NOW + 1)
        assert sources_db.remember_delivery(conn, "gitlab", "72d3162e", NOW)


def test_a_watched_file_is_taken_once_per_content(store: Service) -> None:
    item = sources_db.WatchedFile("run1/a.dat", 10, 123, "ab" * 32, "a.dat-abab")
    with write_transaction(store.engine) as conn:
        assert sources_db.add_watched(conn, "/data", item, NOW)
        assert not sources_db.add_watched(conn, "/data", item, NOW)
        assert sources_db.add_watched(conn, "/other", item, NOW)
    with read_transaction(store.engine) as conn:
        assert sources_db.watched(conn, "/data", ["run1/a.dat", "b.dat"]) == {"run1/a.dat": [item]}


def test_a_branch_remembers_its_last_outcome(store: Service) -> None:
    with write_transaction(store.engine) as conn:
        assert branches.previous_outcome(conn, "repo", "refs/heads/main") is None
        branches.set_outcome(conn, "repo", "refs/heads/main", "r1", "passed", NOW)
        branches.set_outcome(conn, "repo", "refs/heads/main", "r2", "failed", NOW + 1)
        assert branches.previous_outcome(conn, "repo", "refs/heads/main") == "failed"
        assert branches.previous_outcome(conn, "other", "refs/heads/main") is None
