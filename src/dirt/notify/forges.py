"""Commit statuses on GitHub and GitLab: one per task, `{context}/{task name}`.

GitHub: ``POST {api_url}/repos/{owner}/{name}/statuses/{sha}`` with ``Authorization: Bearer``,
body ``{state, target_url, description, context}``, states pending, success, failure, error.
GitLab: ``POST {api_url}/projects/{id or url-encoded path}/statuses/{sha}`` with
``PRIVATE-TOKEN``, body ``{state, name, target_url, description, ref}``, states pending,
running, success, failed, canceled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from dirt.ci_config import GithubSettings, GitlabSettings
from dirt.db.outbox import Notification
from dirt.models import Record, Task, TaskState
from dirt.notify.base import PermanentFailure, TemporaryFailure
from dirt.notify.http import post_json, request_json
from dirt.notify.links import clip, task_url

GITHUB_DESCRIPTION = 140  # GitHub answers 422 to a longer description
GITLAB_DESCRIPTION = 255
GITHUB_API_VERSION = "2022-11-28"
_SCP_URL = re.compile(r"^(?:[^@/]+@)?([^:/]+):(?!//)(.+)$")  # git@github.com:owner/name.git


def _host_and_path(repository: str) -> tuple[str, str] | None:
    """(host, path without .git) of a clone URL: https://, ssh://, git@host:path."""
    match = _SCP_URL.match(repository)
    if match and "://" not in repository:
        host, path = match.group(1), match.group(2)
    else:
        parts = urlsplit(repository)
        if not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
    path = path.strip("/").removesuffix(".git")
    return (host.lower(), path) if path else None


def _web_host(api_url: str) -> tuple[str, str]:
    """The forge's host for `api_url`, and the path its API lives under."""
    parts = urlsplit(api_url)
    host = (parts.hostname or "").lower()
    return ("github.com" if host == "api.github.com" else host), parts.path


def github_repository(settings: GithubSettings, record: Record) -> str | None:
    """owner/name: `[notify.github] repository`, else the record's, when it is on this forge."""
    if settings.repository:
        return settings.repository
    project = record.extra.get("project")
    found = _host_and_path(str(record.extra.get("repository") or ""))
    if found is None or found[0] != _web_host(settings.api_url)[0]:
        return None
    if isinstance(project, str) and project.count("/") == 1:
        return project
    return found[1] if found[1].count("/") == 1 else None


def gitlab_project(settings: GitlabSettings, record: Record) -> str | None:
    """The project id or group/name: `[notify.gitlab] project`, else the record's, when it is
    on this GitLab (a GitLab under a path, e.g. https://host/gitlab/api/v4, counts)."""
    if settings.project:
        return settings.project
    found = _host_and_path(str(record.extra.get("repository") or ""))
    host, api_path = _web_host(settings.api_url)
    if found is None or found[0] != host:
        return None
    project = record.extra.get("project")
    if isinstance(project, str) and "/" in project:
        return project
    prefix = api_path.split("/api/", 1)[0].strip("/")
    path = found[1]
    if prefix and path.startswith(prefix + "/"):
        path = path[len(prefix) + 1 :]
    return path if "/" in path else None


def _description(task: Task, lost: bool) -> str:
    if task.state == TaskState.WAITING:
        return "waiting for a node"
    if task.state == TaskState.RUNNING:
        return f"running on {task.node}" if task.node else "running"
    if task.state == TaskState.SUCCEEDED:
        took = f" in {task.duration:.0f} s" if task.duration is not None else ""
        return f"passed{took}"
    if task.state == TaskState.CANCELLED:
        return "cancelled"
    reason = (task.reason or "failed").strip().splitlines()
    last = reason[-1] if reason else "failed"
    return ("lost: " if lost else "") + last


def github_state(task: Task, lost: bool = False) -> str:
    if task.state in (TaskState.WAITING, TaskState.RUNNING):
        return "pending"
    if task.state == TaskState.SUCCEEDED:
        return "success"
    if task.state == TaskState.FAILED and not lost:
        return "failure"
    return "error"  # cancelled, or lost for good (no node could finish it)


def gitlab_state(task: Task) -> str:
    return {
        TaskState.WAITING: "pending",
        TaskState.RUNNING: "running",
        TaskState.SUCCEEDED: "success",
        TaskState.FAILED: "failed",
        TaskState.CANCELLED: "canceled",
    }[task.state]


def github_status(
    settings: GithubSettings, record: Record, task: Task, base_url: str, lost: bool = False
) -> tuple[str, dict[str, Any]] | None:
    """(ordering key, payload) of the GitHub status for `task` now, or None when the record
    is not a commit on this GitHub."""
    sha, repository = record.extra.get("sha"), github_repository(settings, record)
    if not isinstance(sha, str) or not sha or repository is None:
        return None
    context = f"{settings.context}/{task.name}"
    body = {
        "state": github_state(task, lost),
        "target_url": task_url(base_url, record.id, task.id),
        "description": clip(_description(task, lost), GITHUB_DESCRIPTION),
        "context": context,
    }
    key = f"github:{repository}:{sha}:{context}"
    return key, {"repository": repository, "sha": sha, "body": body}


def gitlab_status(
    settings: GitlabSettings, record: Record, task: Task, base_url: str, lost: bool = False
) -> tuple[str, dict[str, Any]] | None:
    """(ordering key, payload) of the GitLab status for `task` now, or None."""
    sha, project = record.extra.get("sha"), gitlab_project(settings, record)
    if not isinstance(sha, str) or not sha or project is None:
        return None
    name = f"{settings.context}/{task.name}"
    body: dict[str, Any] = {
        "state": gitlab_state(task),
        "name": name,
        "target_url": task_url(base_url, record.id, task.id),
        "description": clip(_description(task, lost), GITLAB_DESCRIPTION),
    }
    ref = record.extra.get("ref")
    if isinstance(ref, str) and ref.startswith(("refs/heads/", "refs/tags/")):
        body["ref"] = ref.split("/", 2)[2]
    key = f"gitlab:{project}:{sha}:{name}"
    return key, {"project": project, "sha": sha, "body": body}


def _token(environ: Mapping[str, str], variable: str, where: str) -> str:
    token = environ.get(variable, "")
    if not token:
        # The server's environment can be fixed and the server restarted: keep the row.
        raise TemporaryFailure(f"{where}: ${variable} is not set for the server")
    return token


class GithubChannel:
    name = "github"

    def __init__(self, settings: GithubSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = environ

    def _headers(self) -> dict[str, str]:
        token = _token(self.environ, self.settings.token_env, "notify.github.token_env")
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": GITHUB_API_VERSION,
        }

    def send(self, notification: Notification) -> None:
        payload = notification.payload
        owner, _, name = str(payload["repository"]).partition("/")
        url = (
            f"{self.settings.api_url.rstrip('/')}/repos/{quote(owner, safe='')}/"
            f"{quote(name, safe='')}/statuses/{quote(str(payload['sha']), safe='')}"
        )
        post_json(url, payload["body"], self._headers(), self.settings.timeout)

    def check(self) -> str:
        """`dirt notify test`: the token works (and reaches the configured repository)."""
        api = self.settings.api_url.rstrip("/")
        repo = self.settings.repository
        url = f"{api}/repos/{repo}" if repo else f"{api}/rate_limit"
        request_json("GET", url, None, self._headers(), self.settings.timeout)
        return f"GitHub answered at {url}"


class GitlabChannel:
    name = "gitlab"

    def __init__(self, settings: GitlabSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = environ

    def _headers(self) -> dict[str, str]:
        token = _token(self.environ, self.settings.token_env, "notify.gitlab.token_env")
        return {"PRIVATE-TOKEN": token}

    def send(self, notification: Notification) -> None:
        payload = notification.payload
        project = quote(str(payload["project"]), safe="")
        sha = quote(str(payload["sha"]), safe="")
        url = f"{self.settings.api_url.rstrip('/')}/projects/{project}/statuses/{sha}"
        try:
            post_json(url, payload["body"], self._headers(), self.settings.timeout)
        except PermanentFailure as exc:
            # GitLab refuses a status equal to the one it has ("Cannot transition status"):
            # the forge already shows what this row says.
            if "Cannot transition status" not in str(exc):
                raise

    def check(self) -> str:
        api = self.settings.api_url.rstrip("/")
        project = self.settings.project
        url = f"{api}/projects/{quote(project, safe='')}" if project else f"{api}/version"
        request_json("GET", url, None, self._headers(), self.settings.timeout)
        return f"GitLab answered at {url}"
