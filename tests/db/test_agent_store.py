"""Pull-mode agents' jobs in the store, on SQLite and PostgreSQL: claims are the dispatcher's
reservation, every step is conditional, and the lease sweep may run in any number of
processes at once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from dirt.config import Settings
from dirt.documents.agents import Registration
from dirt.errors import StateError, UnauthorizedError
from dirt.models import NodeKind, Outcome, TaskState, TokenScope
from dirt.service import Service
from dirt.service.base import NODES, TASKS

INFO = {"platform": "linux", "cpu_count": 4, "environ": {"ROLE": "builder"}}
SUCCESS = ({"success": True}, None, 0, None, False, False, 0.01, b"")


def agents(store: Service, *names: str, slots: int = 4) -> str:
    for name in names:
        store.register_agent(Registration(name, slots, INFO))
    return store.create_token(f"t{time.monotonic_ns()}", TokenScope.AGENT)


def test_an_agent_and_a_dispatcher_never_hold_the_same_task(store: Service) -> None:
    token = agents(store, "a1")
    ids = [t.id for t in store.submit_tasks("r1", ["examples.simple"] * 3).tasks]
    _, reserved = store.dispatch([], [], ids[:1])  # a dispatcher holds the first
    assert reserved == ids[:1]
    offer = store.claim_job("a1", token)
    assert offer is not None and offer.task.id in ids[1:]
    assert store.dispatch([], [], [offer.task.id]) == ([], [])  # the agent's: not reservable


def test_racing_agents_get_each_task_once(store: Service) -> None:
    names = [f"a{i}" for i in range(4)]
    token = agents(store, *names, slots=50)
    ids = [t.id for t in store.submit_tasks("r1", ["examples.simple"] * 40).tasks]
    taken: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (offer := store.claim_job(name, token)) is not None:
            with lock:
                taken.append(offer.task.id)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(taken) == Counter(ids)  # every task, each exactly once


def test_a_finished_job_stores_once_and_brings_the_next(store: Service) -> None:
    token = agents(store, "a1")
    ids = [t.id for t in store.submit_tasks("r1", ["examples.simple"] * 2).tasks]
    first = store.claim_job("a1", token)
    assert first is not None
    state, second = store.finish_job(first.job_id, first.token, SUCCESS, then_claim=True)
    assert state is TaskState.SUCCEEDED and second is not None
    assert {first.task.id, second.task.id} == set(ids)
    # The same report again (its answer was lost): nothing changes, nothing is refused.
    assert store.finish_job(first.job_id, first.token, SUCCESS) == (TaskState.SUCCEEDED, None)
    assert store.task(first.task.id).attempts == 1


def test_an_agents_progress_is_no_news_to_dispatchers(
    store: Service, store_settings: Settings
) -> None:
    dispatcher = Service(store_settings)  # another process, as `dirt serve`'s dispatcher is
    try:
        token = agents(store, "a1")
        ids = [t.id for t in store.submit_tasks("r1", ["examples.simple"] * 3).tasks]
        assert dispatcher.changed_elsewhere() == {TASKS, NODES}  # the agent, the tasks
        first = store.claim_job("a1", token)
        assert first is not None
        _, second = store.finish_job(first.job_id, first.token, SUCCESS, then_claim=True)
        assert second is not None
        assert not store.job_heartbeat(second.job_id, second.token)
        # Claims, results and heartbeats: nothing for a dispatcher to survey the store for...
        assert dispatcher.changed_elsewhere() == set()
        # ...but a submission, or a cancel, is.
        [waiting] = set(ids) - {first.task.id, second.task.id}
        store.cancel_task(waiting)
        assert dispatcher.changed_elsewhere() == {TASKS}
    finally:
        dispatcher.close()


def test_a_lost_lease_requeues_once_and_refuses_the_late_result(store: Service) -> None:
    token = agents(store, "a1")
    [task_id] = [t.id for t in store.submit_tasks("r1", ["examples.simple"]).tasks]
    offer = store.claim_job("a1", token)
    assert offer is not None
    later = time.time() + store.lease + 1
    first, second = store.expire_agent_leases(later), store.expire_agent_leases(later)
    assert first.lost == [task_id] and second.lost == []  # a second sweeper finds nothing
    assert first.offline == ["a1"]
    with pytest.raises(StateError, match="lease ran out"):
        store.finish_job(offer.job_id, offer.token, SUCCESS)
    task, _, attempts = store.task_detail(task_id)
    assert task.state is TaskState.WAITING
    assert [a.outcome for a in attempts] == [Outcome.LOST]
    node = store.node("a1")
    assert node.kind is NodeKind.AGENT and not node.online
    assert (node.penalty, node.infra_failures) == (1, 1)


def test_a_task_that_loses_its_agent_max_attempts_times_fails(store: Service) -> None:
    token = agents(store, "a1")
    [task_id] = [t.id for t in store.submit_tasks("r1", ["examples.simple"]).tasks]
    now = time.time()
    for _ in range(store.settings.dispatch.max_attempts):
        assert store.claim_job("a1", token, now=now) is not None
        now += store.lease + 1
        store.expire_agent_leases(now)
    task = store.task(task_id)
    assert task.state is TaskState.FAILED and "gave up after 3 attempt(s)" in (task.reason or "")


def test_output_heartbeats_and_cancel(store: Service) -> None:
    token = agents(store, "a1")
    [task_id] = [t.id for t in store.submit_tasks("r1", ["examples.simple"]).tasks]
    offer = store.claim_job("a1", token)
    assert offer is not None
    store.job_output(offer.job_id, offer.token, 0, b"line one\n")
    store.job_output(offer.job_id, offer.token, 0, b"line one\n")  # again: stored once
    store.job_output(offer.job_id, offer.token, 9, b"line two\n")
    assert store.job_heartbeat(offer.job_id, offer.token) is False
    store.cancel_task(task_id)
    assert store.job_heartbeat(offer.job_id, offer.token) is True
    killed = (None, "task was killed on request", None, 9, False, True, 0.2, b"")
    assert store.finish_job(offer.job_id, offer.token, killed)[0] is TaskState.CANCELLED
    assert store.task(task_id).output == "line one\nline two\n"


SIGTERM_ENDED = (None, None, None, 15, False, False, 0.2, b"")
FORK_SERVER_DIED = (None, "fork server died (killed by SIGTERM); task lost", None, None,
                    False, False, 0.2, b"")  # fmt: skip
SUCCEEDED = ({"success": True}, None, 0, None, False, False, 0.2, b"")


def test_a_task_whose_cancel_was_asked_and_that_a_signal_ended_was_cancelled(
    store: Service,
) -> None:
    # A batch system's scancel signals every process of the job, the task's too, before its
    # agent hears of the cancel: the cancel ended it, not a fault of the node.
    assert agent_reports(store, SIGTERM_ENDED, cancel_first=True) is TaskState.CANCELLED


def test_a_task_whose_cancel_was_asked_and_whose_fork_server_died_was_cancelled(
    store: Service,
) -> None:
    # The same scancel may end the fork server first: the agent reports the task lost.
    assert agent_reports(store, FORK_SERVER_DIED, cancel_first=True) is TaskState.CANCELLED


def test_a_task_that_sent_results_before_its_cancel_reached_it_keeps_them(
    store: Service,
) -> None:
    assert agent_reports(store, SUCCEEDED, cancel_first=True) is TaskState.SUCCEEDED


def test_a_task_a_signal_ended_without_a_cancel_failed(store: Service) -> None:
    assert agent_reports(store, SIGTERM_ENDED, cancel_first=False) is TaskState.FAILED


def agent_reports(store: Service, wire: tuple[Any, ...], cancel_first: bool) -> TaskState:
    """The state stored for an agent's task reported ended as `wire` says (its agent did not
    kill it), with or without a cancel asked first."""
    token = agents(store, "a1")
    [task_id] = [t.id for t in store.submit_tasks("r1", ["examples.simple"]).tasks]
    offer = store.claim_job("a1", token)
    assert offer is not None
    if cancel_first:
        store.cancel_task(task_id)
    return store.finish_job(offer.job_id, offer.token, wire)[0]


def test_a_revoked_agent_token_voids_its_jobs(store: Service) -> None:
    token = agents(store, "a1")
    store.submit_tasks("r1", ["examples.simple"])
    offer = store.claim_job("a1", token)
    assert offer is not None
    name = next(t.name for t in store.tokens() if t.scope is TokenScope.AGENT)
    store.revoke_token(name)
    with pytest.raises(UnauthorizedError, match="revoked"):
        store.job_heartbeat(offer.job_id, offer.token)
    with pytest.raises(UnauthorizedError, match="revoked"):
        store.claim_job("a1", token)


def test_a_task_an_agent_can_run_waits_for_its_slot_not_for_a_dispatcher(store: Service) -> None:
    token = agents(store, "a1", slots=1)
    ids = [t.id for t in store.submit_tasks("r1", ["examples.simple"] * 2).tasks]
    assert store.claim_job("a1", token) is not None
    waiting = next(t for t in store.tasks(ids) if t.state is TaskState.WAITING)
    reason = store.task_detail(waiting.id)[0].waiting_reason
    assert reason == "queued: next in line; its matching node a1 is busy: 1/1 slots"
    store.expire_agent_leases(time.time() + store.lease + 1)  # gone quiet: offline
    reason = store.task_detail(waiting.id)[0].waiting_reason
    assert reason is not None and reason.startswith("no dispatcher is running")
