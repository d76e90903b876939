"""The sender against a real store, a real SMTP server and a loopback HTTP server: retries,
backoff, restarts, nothing lost and nothing sent twice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from dirt.ci_config import EmailSettings, GithubSettings, NotifySettings
from dirt.config import Settings
from dirt.db import outbox
from dirt.db.engine import read_transaction, write_transaction
from dirt.db.outbox import NewNotification
from dirt.models import TaskState
from dirt.notify.base import RetryPolicy
from dirt.notify.plan import Planner
from dirt.notify.sender import Sender, channels_from_settings, send_once
from dirt.service import Service
from dirt.service.outbox import EngineOutbox
from tests.conftest import wait_for
from tests.httpstub import HttpStub
from tests.notify.conftest import BASE_URL, SmtpServer, git_record, task

POLICY = RetryPolicy(initial=10, maximum=40, give_up_after=3600, lease=300)


def email_settings(port: int) -> NotifySettings:
    email = EmailSettings(smtp_host="127.0.0.1", smtp_port=port, to=["dev@example.org"])
    return NotifySettings(email=email)


def failed_record_rows(notify: NotifySettings) -> list[NewNotification]:
    planner = Planner(notify, project="hello", base_url=BASE_URL)
    tasks = [task("ci.test", TaskState.FAILED, "boom")]
    return planner.record_finished(git_record(), tasks, previous="passed")


def queue_mail(service: Service, port: int, now: float) -> tuple[NotifySettings, int]:
    """The settings of an SMTP server on `port`, and one mail about a failed record queued."""
    notify = email_settings(port)
    [nid] = write(service, failed_record_rows(notify), now)
    return notify, nid


def write(service: Service, rows: list[NewNotification], now: float) -> list[int]:
    with write_transaction(service.engine) as conn:
        return outbox.insert_notifications(conn, rows, now)


def state_of(service: Service, nid: int) -> outbox.Notification:
    with read_transaction(service.engine) as conn:
        found = outbox.get_notification(conn, nid)
    assert found is not None
    return found


MakeSender = Callable[..., Sender]


@pytest.fixture
def make_sender() -> Iterator[MakeSender]:
    """Senders over the test's store; closed at teardown."""
    made: list[Sender] = []

    def make(
        service: Service, notify: NotifySettings, policy: RetryPolicy = POLICY, idle: float = 5.0
    ) -> Sender:
        channels = channels_from_settings(notify, {"GH_TOKEN": "ghp_x"})
        sender = Sender(EngineOutbox(service.engine), channels, policy, idle=idle)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.close()


def test_a_pending_mail_is_sent_once(
    service: Service, smtp: SmtpServer, make_sender: MakeSender
) -> None:
    notify, nid = queue_mail(service, smtp.port, time.time())
    sender = make_sender(service, notify)
    assert sender.send_due() == 1
    assert sender.send_due() == 0
    assert len(smtp.inbox.messages) == 1
    assert state_of(service, nid).state == "sent"


def test_a_mail_waits_for_an_smtp_server_that_is_down_and_arrives_exactly_once(
    service: Service,
    smtp_later: SmtpServer,
    make_sender: MakeSender,
) -> None:
    start = time.time()
    notify, nid = queue_mail(service, smtp_later.port, start)
    sender = make_sender(service, notify)
    assert sender.send_due(now=start) == 1  # refused
    first = state_of(service, nid)
    assert (first.state, first.attempts, first.next_try) == ("pending", 1, start + 10)
    assert "Connection refused" in (first.last_error or "")
    assert sender.send_due(now=start + 5) == 0  # not due yet
    sender.send_due(now=start + 10)  # refused again: the wait doubles
    assert state_of(service, nid).next_try == start + 30
    smtp_later.start()
    assert sender.send_due(now=start + 30) == 1
    for later in (start + 60, start + 10_000):
        assert sender.send_due(now=later) == 0
    assert len(smtp_later.inbox.messages) == 1
    sent = state_of(service, nid)
    assert (sent.state, sent.attempts) == ("sent", 3)


def test_a_mail_refused_for_good_is_failed_and_not_retried(
    service: Service,
    smtp: SmtpServer,
    make_sender: MakeSender,
) -> None:
    smtp.inbox.rcpt_reply = "550 5.1.1 no such user"
    notify, nid = queue_mail(service, smtp.port, time.time())
    sender = make_sender(service, notify)
    sender.send_due()
    failed = state_of(service, nid)
    assert failed.state == "failed" and "550" in (failed.last_error or "")
    assert sender.send_due(now=time.time() + 10**5) == 0


def test_notifications_pending_at_a_restart_go_out_after_it(
    settings: Settings,
    service: Service,
    smtp_later: SmtpServer,
    make_sender: MakeSender,
) -> None:
    notify = email_settings(smtp_later.port)
    start = time.time()
    ids = write(service, failed_record_rows(notify) * 2, start)
    before = make_sender(service, notify)
    before.send_due(now=start)  # the SMTP server is down
    before.close()
    service.close()  # the server stops
    smtp_later.start()
    restarted = Service(settings)
    try:
        after = make_sender(restarted, notify)
        assert after.send_due(now=start + 10) == 2
        assert len(smtp_later.inbox.messages) == 2
        assert [state_of(restarted, i).state for i in ids] == ["sent", "sent"]
    finally:
        restarted.close()


def test_what_a_dead_sender_claimed_is_sent_once_its_lease_ends(
    service: Service,
    smtp: SmtpServer,
    make_sender: MakeSender,
) -> None:
    start = time.time()
    notify, nid = queue_mail(service, smtp.port, start)
    with write_transaction(service.engine) as conn:
        outbox.claim_due(conn, "a-server-that-died", start, POLICY.lease)
    sender = make_sender(service, notify)
    assert sender.send_due(now=start + 1) == 0
    assert sender.send_due(now=start + POLICY.lease + 1) == 1
    assert len(smtp.inbox.messages) == 1
    assert state_of(service, nid).state == "sent"


def test_a_notification_retried_past_the_window_gives_up(
    service: Service,
    smtp_port: int,
    make_sender: MakeSender,
) -> None:
    notify = email_settings(smtp_port)  # nothing ever listens there
    start = time.time()
    [nid] = write(service, failed_record_rows(notify), start)
    policy = RetryPolicy(initial=10, maximum=40, give_up_after=100)
    sender = make_sender(service, notify, policy=policy)
    now = start
    while state_of(service, nid).state == "pending":
        now = state_of(service, nid).next_try
        sender.send_due(now=now)
    failed = state_of(service, nid)
    assert failed.state == "failed" and now - start <= 100
    assert (failed.last_error or "").startswith(f"gave up after {failed.attempts} attempt(s)")


def test_commit_statuses_reach_github_in_order(
    service: Service,
    stub: HttpStub,
    make_sender: MakeSender,
) -> None:
    notify = NotifySettings(github=GithubSettings(api_url=stub.url, token_env="GH_TOKEN"))
    planner = Planner(notify, project="hello", base_url=BASE_URL)
    record = git_record(repository=f"{stub.url}/octo/hello.git")
    sender = make_sender(service, notify)
    write(service, planner.task_created(record, [task("ci.test", TaskState.WAITING)]), time.time())
    sender.send_due()
    write(service, planner.task_finished(record, task("ci.test", TaskState.SUCCEEDED)), time.time())
    sender.send_due()
    assert [r.json()["state"] for r in stub.wait_for(2)] == ["pending", "success"]


def test_a_status_replaced_before_it_went_out_is_never_sent(
    service: Service,
    stub: HttpStub,
    make_sender: MakeSender,
) -> None:
    notify = NotifySettings(github=GithubSettings(api_url=stub.url, token_env="GH_TOKEN"))
    planner = Planner(notify, project="hello", base_url=BASE_URL)
    record = git_record(repository=f"{stub.url}/octo/hello.git")
    now = time.time()
    write(service, planner.task_created(record, [task("ci.test", TaskState.WAITING)]), now)
    write(service, planner.task_finished(record, task("ci.test", TaskState.FAILED)), now)
    make_sender(service, notify).send_due()
    assert [r.json()["state"] for r in stub.requests] == ["failure"]


def test_a_rate_limited_forge_is_asked_again_when_it_says(
    service: Service,
    stub: HttpStub,
    make_sender: MakeSender,
) -> None:
    stub.answer_next(429, b"{}", **{"Retry-After": "120"})
    notify = NotifySettings(github=GithubSettings(api_url=stub.url, token_env="GH_TOKEN"))
    planner = Planner(notify, project="hello", base_url=BASE_URL)
    record = git_record(repository=f"{stub.url}/octo/hello.git")
    now = time.time()
    [nid] = write(service, planner.task_created(record, [task("a", TaskState.WAITING)]), now)
    make_sender(service, notify).send_due(now=now)
    assert state_of(service, nid).next_try == now + 120


def test_a_channel_no_longer_configured_fails_its_rows(
    service: Service,
    make_sender: MakeSender,
) -> None:
    [nid] = write(service, failed_record_rows(email_settings(25)), time.time())
    make_sender(service, NotifySettings()).send_due()
    failed = state_of(service, nid)
    assert failed.state == "failed" and "[notify.email] is not configured" in (
        failed.last_error or ""
    )


def test_the_running_sender_sends_what_is_written_while_it_waits(
    service: Service,
    smtp: SmtpServer,
    make_sender: MakeSender,
) -> None:
    notify = email_settings(smtp.port)
    sender = make_sender(service, notify, idle=30.0)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,))
    thread.start()
    try:
        write(service, failed_record_rows(notify), time.time())
        sender.wake()
        wait_for(lambda: smtp.inbox.messages, timeout=10, what="the mail")
    finally:
        stop.set()
        sender.wake()
        thread.join(10)
    assert not thread.is_alive()


def test_a_test_message_is_sent_at_once(smtp: SmtpServer) -> None:
    notify = email_settings(smtp.port)
    [item] = Planner(notify, project="hello", base_url=BASE_URL).test()
    assert send_once(channels_from_settings(notify, {}), item) is None
    assert smtp.inbox.messages[0]["Subject"] == "[hello] test message from dirt"
