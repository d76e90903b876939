"""What a push tells dirt, and the record and task documents it makes.

A record made from a commit has `_id` = the commit's full sha, so the same commit pushed twice,
or to two branches, is one record: `only_new` drops records the store already holds (and their
tasks) before the submission is checked, and the service runs it inside the write transaction
that inserts (see `only_new`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dirt.ci_config import CiSettings
from dirt.errors import DirtError

log = logging.getLogger("dirt.sources")

ZERO_SHA = "0" * 40
# Spacing of `created` between the records of one push, oldest commit first, so the newest
# commit is on top of the record list (which is ordered by `created`).
CREATED_STEP = 0.001


class SourceError(DirtError):
    """A change source sent something dirt cannot use; `status` is the HTTP answer to give."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    author: str = ""  # "Name <email>"
    timestamp: float | None = None
    url: str | None = None  # the forge's page of this commit


@dataclass(frozen=True)
class Update:
    """One ref a push moved. `commits` are the commits new to the repository, oldest first."""

    ref: str
    before: str | None  # None: the ref was created
    head: Commit
    commits: tuple[Commit, ...] = ()
    truncated: bool = False  # more new commits than the source listed


@dataclass(frozen=True)
class Push:
    source: str  # "git", "github" or "gitlab"
    repository: str  # what a node clones
    updates: tuple[Update, ...]
    delivery: str | None = None  # the source's id of this delivery, for replays
    pusher: str = ""
    project: str | None = None  # the forge's name of the repository: owner/name, group/name


@dataclass(frozen=True)
class Ignored:
    """A delivery that is understood but makes nothing (a ping, a branch deletion, ...)."""

    reason: str
    delivery: str | None = None


@dataclass
class PushDocuments:
    documents: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # one line per ref left out, and why


def short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def changeset_url(commit: Commit, ref: str | None, ci: CiSettings) -> str | None:
    """The forge's link, else `[ci] changeset_url` filled in, else None."""
    if commit.url:
        return commit.url
    if ci.changeset_url:
        return ci.changeset_url.format(sha=commit.sha, short=commit.sha[:12], ref=ref or "")
    return None


def commit_documents(
    commit: Commit,
    *,
    ref: str | None,
    repository: str,
    ci: CiSettings,
    tasks: Sequence[str] | None = None,
    created: float | None = None,
    project: str | None = None,
) -> list[dict[str, Any]]:
    """The record of `commit` and its tasks (`tasks`, default `[ci] tasks`), as a submission.

    Record fields left unknown (no ref for a bare sha, no forge link) are left out; the task
    kwargs always hold `sha`, `ref` and `repository`.
    """
    fields = {
        "sha": commit.sha,
        "ref": ref,
        "repository": repository,
        "author": commit.author,
        "changeset_url": changeset_url(commit, ref, ci),
        "project": project,
    }
    record: dict[str, Any] = {"_id": commit.sha, "type": "record", "description": commit.subject}
    record.update({k: v for k, v in fields.items() if v})
    if created is not None:
        record["created"] = created
    docs = [record]
    base = {"sha": commit.sha, "ref": ref, "repository": repository}
    for name in ci.tasks if tasks is None else tasks:
        task: dict[str, Any] = {
            "type": "task",
            "record_id": commit.sha,
            "name": name,
            "kwargs": {**ci.task_kwargs(name), **base},
        }
        if created is not None:
            task["created"] = created
        docs.append(task)
    return docs


def push_documents(push: Push, ci: CiSettings, now: float) -> PushDocuments:
    """The documents a push makes: a record per updated ref's head, or per new commit when
    `[ci] every_commit`; refs outside `[ci] branches` are left out with a log line."""
    found = PushDocuments()
    chosen: dict[str, tuple[Commit, str]] = {}
    for update in push.updates:
        if not ci.wants(update.ref):
            line = (
                f"{push.source} push of {update.ref} to {push.repository} ignored: "
                f"not in [ci] branches ({', '.join(ci.branches)})"
            )
            log.info("%s", line)
            found.ignored.append(line)
            continue
        if ci.every_commit:
            if update.truncated:
                log.warning(
                    "%s push of %s to %s listed only %d new commits; records are made for those "
                    "and the head",
                    push.source,
                    update.ref,
                    push.repository,
                    len(update.commits),
                )
            commits: Iterable[Commit] = (*update.commits, update.head)
        else:
            commits = (update.head,)
        for commit in commits:
            # A commit on two pushed refs is one record, with the first ref that brought it.
            chosen.setdefault(commit.sha, (commit, update.ref))
    for index, (commit, ref) in enumerate(chosen.values()):
        found.documents.extend(
            commit_documents(
                commit,
                ref=ref,
                repository=push.repository,
                ci=ci,
                created=now + index * CREATED_STEP,
                project=push.project,
            )
        )
    return found


def only_new(
    docs: Sequence[dict[str, Any]], stored_record_ids: Callable[[set[str]], set[str]]
) -> list[dict[str, Any]]:
    """`docs` without the records the store already holds and without their tasks.

    "Record exists: add nothing". The service calls this inside the write transaction that
    inserts what is left (on SQLite that transaction holds the write lock from its start, so
    nothing can slip in between; on PostgreSQL a concurrent insert of the same record makes
    the insert fail on the primary key: run the transaction again and this drops it).
    """
    ids = {d["_id"] for d in docs if d.get("type") == "record" and isinstance(d.get("_id"), str)}
    stored = stored_record_ids(ids) if ids else set()
    return [
        d
        for d in docs
        if not (d.get("type") == "record" and d.get("_id") in stored)
        and not (d.get("type") == "task" and d.get("record_id") in stored)
    ]
