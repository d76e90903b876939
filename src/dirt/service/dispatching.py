"""What a dispatcher asks of the store: reserve, start and finish tasks in one step, give back
what it cannot run, requeue what a lost node ran, recover what a dead dispatcher left, keep its
notes on nodes, and announce itself (heartbeat, order, its view of the nodes)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from dirt.db import attachments as attachments_db
from dirt.db import dispatching as dispatching_db
from dirt.db import nodes as nodes_db
from dirt.db import output as output_db
from dirt.db import queue as queue_db
from dirt.db import tasks as tasks_db
from dirt.db.dispatching import Start
from dirt.logs import info_lines
from dirt.models import DispatcherInfo, Finished, OutputChunk, Task, TaskState
from dirt.service.base import log
from dirt.service.notices import Notices

ORPHAN_REASON = "its dispatcher stopped without returning it"


class Dispatching(Notices):
    def waiting_tasks(self, limit: int, order: str | None = None) -> list[Task]:
        """Waiting tasks no dispatcher holds: higher priority first, then in `order` (default:
        the settings'): records taking turns ("fair"), or oldest first ("fifo")."""
        with self._read() as conn:
            return tasks_db.waiting_tasks(conn, limit, order or self.settings.dispatch.order)

    def dispatch(
        self,
        finished: Sequence[Finished],
        starts: Sequence[Start],
        reserve: Sequence[str],
        output: Sequence[OutputChunk] = (),
        announce: DispatcherInfo | None = None,
    ) -> tuple[list[str], list[str]]:
        """One dispatcher step in one transaction: mark reserved tasks (id, node, started,
        attempt) as running, store the output that arrived and the finished runs, reserve more
        waiting tasks for this master, and `announce` the dispatcher (heartbeat and view) when
        given.

        Returns (started ids, reserved ids).
        """
        if not finished and not starts and not reserve and not output and announce is None:
            return [], []
        self._to_blobs(finished)
        limit = self.settings.dispatch.output_limit
        head, tail = limit // 2, limit - limit // 2

        def work(conn: Connection, seq: int) -> tuple[list[str], list[str]]:
            # Starts go first: a task can finish in the same step it was marked running.
            started = dispatching_db.start_tasks(conn, starts, self.master_id, seq)
            self._notice_started(conn, started)
            output_db.insert_output(conn, output, head, tail)
            self._store_finished(conn, seq, finished)
            reserved = dispatching_db.reserve_tasks(conn, reserve, self.master_id, seq)
            if announce is not None:
                announce.id = self.master_id
                queue_db.announce(conn, announce)
            return started, reserved

        # Its own progress wakes no one: web pages poll for it, other dispatchers need not know.
        return self._write(work, wake=None)

    def dispatcher_started(self, info: DispatcherInfo) -> None:
        """Announce this dispatcher (see db.schema.dispatchers); rows of dispatchers gone for
        a day are dropped."""
        info.id = self.master_id
        self._write(
            lambda conn, seq: queue_db.register_dispatcher(conn, info, info.started - 86400)
        )

    def dispatcher_stopped(self) -> None:
        now = time.time()
        self._write(lambda conn, seq: queue_db.stop_dispatcher(conn, self.master_id, now))

    def _to_blobs(self, finished: Sequence[Finished]) -> None:
        """Attachments still holding their contents put them in the blob store (outside the
        transaction: a blob nobody names is harmless, a row naming no blob is not)."""
        for f in finished:
            for a in f.attachments:
                if a.sha256 is None:
                    a.sha256, a.size = self.blobs.put(a.content or b"")
                    a.content = None

    def _store_finished(
        self,
        conn: Connection,
        seq: int,
        finished: Sequence[Finished],
        master: str | None = None,
        *,
        lost: bool = False,
    ) -> list[Finished]:
        """Store finished runs with their attachments; returns those stored. A result for a
        task that moved on (requeued, cancelled, a stale attempt) is dropped.

        Every final state a dispatcher stores passes here, so whatever follows from one (a
        notification row) is written here, in the same transaction. `master` is the claim the
        runs were made under (this dispatcher's, unless it takes over a dead one's). `lost`:
        these tasks fail because their nodes were lost (a commit status says "error", not
        "failure").
        """
        if not finished:
            return []
        master = master or self.master_id
        written = set(dispatching_db.finish_tasks(conn, finished, master, seq))
        stored = [f for f in finished if f.task_id in written]
        attachments_db.insert_attachments(conn, [a for f in stored for a in f.attachments])
        refused = [f for f in finished if f.task_id not in written]
        # A write repeated after the store went away mid-commit finds its runs stored already.
        already = dispatching_db.already_finished(conn, refused, master) if refused else set()
        for f in refused:
            if f.task_id in already:
                log.info("Task %s: result from %s was already stored", f.task_id, f.node)
            else:
                log.warning("Task %s: result from %s dropped, the task moved on", f.task_id, f.node)
        lines = []
        for f in stored:
            lines.append(f"Task {f.task_id} pushed to db")
            lines += [f"Task {f.task_id}: file {a.filename} attached" for a in f.attachments]
        info_lines(log, lines)  # one record: two lines a task are the dispatcher's hot path
        if self.planner is not None:
            ids = [f.task_id for f in stored]
            self._notice_finished(conn, ids, lost=ids if lost else ())
        return stored

    def release(self, task_ids: Sequence[str] | None = None) -> int:
        """Give back tasks this master reserved but did not start (all, or those named)."""
        return self._write(
            lambda conn, seq: dispatching_db.release_reservations(
                conn, seq, self.master_id, task_ids
            )
        )

    def requeue(
        self,
        items: Sequence[tuple[str, int]],
        reason: str,
        *,
        node_lost: bool = False,
        claim: str | None = None,
    ) -> tuple[list[str], list[str]]:
        """Running (task id, attempt) pairs back to waiting.

        When `node_lost`, a task that has now lost `max_attempts` nodes fails instead.
        `claim`: the claim id holding the tasks when it is not this master's (a pull-mode
        agent's or a batch job's; the store keeps it where a master's id goes).
        Returns (requeued ids, failed ids).
        """
        requeued, failed = self._write(
            lambda conn, seq: self._requeue(
                conn, seq, items, reason, node_lost, claim or self.master_id
            )
        )
        for task_id in requeued:
            log.info("Task %s back to waiting: %s", task_id, reason)
        for task_id in failed:
            log.warning("Task %s failed: %s; no attempts left", task_id, reason)
        return requeued, failed

    def _requeue(
        self,
        conn: Connection,
        seq: int,
        items: Sequence[tuple[str, int]],
        reason: str,
        node_lost: bool,
        master: str | None,
    ) -> tuple[list[str], list[str]]:
        """Running (task id, attempt) pairs `master` holds back to waiting (any master's when
        None); with `node_lost`, those out of attempts fail. Returns (requeued, failed) ids."""
        now = time.time()
        give_up: list[Finished] = []
        again = list(items)
        if node_lost:
            again = []
            for task_id, attempt in items:
                exhausted = self._attempts_exhausted(conn, task_id)
                if exhausted is None:
                    again.append((task_id, attempt))
                    continue
                give_up.append(
                    Finished(
                        task_id,
                        attempt,
                        exhausted.node or "",
                        TaskState.FAILED,
                        results=None,
                        reason=f"{reason}; gave up after {attempt} attempt(s)",
                        module_sha256=None,
                        completed=now,
                    )
                )
        requeued = dispatching_db.requeue_tasks(conn, again, reason, now, seq, master)
        self._notice_finished(conn, requeued)  # those cancelled while they ran
        failed = self._store_finished(conn, seq, give_up, master, lost=True) if master else []
        return requeued, [f.task_id for f in failed]

    def _attempts_exhausted(self, conn: Connection, task_id: str) -> Task | None:
        """The task, when losing its node now uses up its last attempt; else None."""
        task = tasks_db.get_task(conn, task_id)
        if task is None:
            return None
        limit = task.max_attempts or self.settings.dispatch.max_attempts
        if tasks_db.trailing_lost_attempts(conn, task_id) + 1 >= limit:
            return task
        return None

    def fail_unrunnable(self, task_id: str, reason: str) -> bool:
        """A waiting task that can never run (its module is gone) fails with `reason`."""

        def work(conn: Connection, seq: int) -> bool:
            failed = dispatching_db.fail_waiting(conn, task_id, reason, time.time(), seq)
            if failed:
                self._notice_finished(conn, [task_id])
            return failed

        return self._write(work, wake=None)

    def cancel_requested(self) -> list[tuple[str, int]]:
        """Running tasks of this dispatcher that someone asked to cancel: (id, attempt)."""
        with self._read() as conn:
            return tasks_db.cancel_requested(conn, self.master_id)

    def node_health(
        self,
        address: str,
        *,
        online: bool,
        error: str | None = None,
        load: list[float] | None = None,
        infra_failure: bool = False,
    ) -> None:
        """What the dispatcher learned of a node: reachable or not, its error, its load, and
        whether a task failed there for a reason of the node's own."""
        values: dict[str, Any] = {"online": online}
        if online:
            values["last_seen"] = time.time()
            values["last_error"] = None
        if error is not None:
            values["last_error"] = error
        if load is not None:
            values["load"] = load
        self._write(
            lambda conn, seq: nodes_db.update_node(
                conn, address, seq, infra_failure=infra_failure, **values
            ),
            wake=None,
        )
