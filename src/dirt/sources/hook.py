"""The git post-receive hook: installing it, and reading what it posts.

`dirt hook install GIT_DIR --url URL [--token-env VAR]` writes `templates/post-receive` into
the repository's hooks folder. After each push the hook POSTs to URL (the server's
``/hooks/git``) a JSON body::

    {"dirt_hook": 1, "repository": "<what nodes clone>", "pushed": <epoch seconds>,
     "updates": [{"ref": "refs/heads/main", "before": "<old sha>" | null, "after": "<new sha>",
                  "head": {"sha", "timestamp", "author", "subject"},
                  "commits": [<same shape>, ...], "truncated": false}, ...]}

with ``Authorization: Bearer <token>`` (from the variable named at install) and
``X-Dirt-Delivery: <id>`` (one per push, kept across retries). `head` is the commit the ref
now points at (a tag is peeled); `commits` are the commits new to the repository, oldest
first, at most 1000 (`truncated` says there were more); deleted refs are left out. Any 2xx
answer is success; 400, 413, 415 and 422 mean the push can never be taken (the hook moves it to
dirt-spool/rejected/); anything else, or no answer, keeps it for the next push.
"""

from __future__ import annotations

import json
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import Any

from dirt.errors import DirtError
from dirt.sources.git import GitError, git, repository_root
from dirt.sources.push import Commit, Ignored, Push, SourceError, Update

HOOK_NAME = "post-receive"
HOOK_MARK = "# dirt-hook-version: 1"
PAYLOAD_VERSION = 1
SPOOL = "dirt-spool"
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SHA = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")  # SHA-1 and SHA-256 repositories


class HookError(DirtError):
    """The hook cannot be installed as asked."""


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def hook_script(url: str, token_env: str | None, repository: str) -> str:
    """The hook's text with its three settings filled in."""
    template = (resources.files("dirt.sources") / "templates" / HOOK_NAME).read_text("utf-8")
    values = {"@URL@": url, "@TOKEN_ENV@": token_env or "", "@REPOSITORY@": repository}
    for placeholder, value in values.items():
        template = template.replace(placeholder, _sh_quote(value))
    return template


def hooks_dir(git_dir: Path | str) -> Path:
    """Where git runs this repository's hooks (honours core.hooksPath)."""
    path = Path(git(git_dir, "rev-parse", "--git-path", "hooks").strip())
    return path if path.is_absolute() else Path(git_dir) / path


def install_hook(
    git_dir: Path | str,
    url: str,
    *,
    token_env: str | None = None,
    repository: str | None = None,
    force: bool = False,
) -> Path:
    """Write the post-receive hook into the repository at `git_dir`; returns its path.

    `repository` (default: the repository's own folder) is what nodes will clone. A hook dirt
    wrote before is replaced; another post-receive hook is kept and this refuses, unless
    `force`, which keeps the old one as post-receive.before-dirt.
    """
    problems = []
    if not re.match(r"https?://[^/\s]+", url) or any(c.isspace() for c in url):
        problems.append(f"--url {url!r} is not an http:// or https:// URL")
    if token_env is not None and not _VARIABLE.match(token_env):
        problems.append(f"--token-env {token_env!r} is not an environment variable name")
    if repository is not None and (not repository or "\n" in repository):
        problems.append(f"--repository {repository!r} is not a URL or path")
    if problems:
        raise HookError("; ".join(problems))
    try:
        root = repository_root(git_dir)
    except GitError as exc:
        raise HookError(str(exc)) from None
    folder = hooks_dir(git_dir)
    target = folder / HOOK_NAME
    if target.exists() and HOOK_MARK not in target.read_text("utf-8", "replace"):
        if not force:
            raise HookError(
                f"{target} exists and is not dirt's: move it aside, call dirt's hook from it, "
                "or install with --force (the old hook is kept as post-receive.before-dirt)"
            )
        target.replace(folder / f"{HOOK_NAME}.before-dirt")
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{HOOK_NAME}.dirt-new"
    staging.write_text(hook_script(url, token_env, repository or str(root)), encoding="utf-8")
    mode = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    os.chmod(staging, mode)
    staging.replace(target)  # a push never runs half a hook
    return target


def parse_hook_payload(raw: bytes, delivery: str | None = None) -> Push | Ignored:
    """What the post-receive hook posted, or SourceError(400) naming every problem."""
    try:
        # Commit subjects in a legacy encoding are not UTF-8: keep the push, not the bytes.
        payload = json.loads(raw.decode("utf-8", "replace"))
    except ValueError as exc:
        raise SourceError(400, f"the hook's payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise SourceError(400, "the hook's payload must be a JSON object")
    if payload.get("dirt_hook") != PAYLOAD_VERSION:
        raise SourceError(
            400,
            f"hook payload version {payload.get('dirt_hook')!r} is not {PAYLOAD_VERSION}: "
            "reinstall the hook with `dirt hook install`",
        )
    problems: list[str] = []
    repository = payload.get("repository")
    if not isinstance(repository, str) or not repository:
        problems.append("'repository' must be a non-empty string")
    raw_updates = payload.get("updates")
    if not isinstance(raw_updates, list):
        problems.append("'updates' must be a list")
        raw_updates = []
    updates = [
        u for i, item in enumerate(raw_updates) if (u := _update(item, i, problems)) is not None
    ]
    if problems:
        raise SourceError(400, "the hook's payload is malformed: " + "; ".join(problems))
    if not updates:
        return Ignored("the push updated no branch or tag with a commit", delivery)
    return Push("git", str(repository), tuple(updates), delivery)


def _update(item: Any, index: int, problems: list[str]) -> Update | None:
    where = f"updates[{index}]"
    if not isinstance(item, dict):
        problems.append(f"{where} must be an object")
        return None
    start = len(problems)
    ref = item.get("ref")
    if not isinstance(ref, str) or not ref.startswith("refs/"):
        problems.append(f"{where}.ref {ref!r} is not a full ref name")
    before = item.get("before")
    if before is not None and not (isinstance(before, str) and _SHA.match(before)):
        problems.append(f"{where}.before {before!r} is not a sha or null")
    head = _commit(item.get("head"), f"{where}.head", problems)
    raw_commits = item.get("commits", [])
    if not isinstance(raw_commits, list):
        problems.append(f"{where}.commits must be a list")
        raw_commits = []
    commits = [_commit(c, f"{where}.commits[{i}]", problems) for i, c in enumerate(raw_commits)]
    truncated = item.get("truncated", False)
    if not isinstance(truncated, bool):
        problems.append(f"{where}.truncated must be true or false")
    if len(problems) > start or head is None:
        return None
    return Update(
        ref=str(ref),
        before=before,
        head=head,
        commits=tuple(c for c in commits if c is not None),
        truncated=truncated,
    )


def _commit(item: Any, where: str, problems: list[str]) -> Commit | None:
    if not isinstance(item, dict):
        problems.append(f"{where} must be an object")
        return None
    sha, subject = item.get("sha"), item.get("subject", "")
    author, stamp = item.get("author", ""), item.get("timestamp")
    ok = True
    if not isinstance(sha, str) or not _SHA.match(sha):
        problems.append(f"{where}.sha {sha!r} is not a full sha")
        ok = False
    if not isinstance(subject, str) or not isinstance(author, str):
        problems.append(f"{where}: subject and author must be strings")
        ok = False
    if stamp is not None and (not isinstance(stamp, int | float) or isinstance(stamp, bool)):
        problems.append(f"{where}.timestamp must be epoch seconds")
        ok = False
    if not ok:
        return None
    return Commit(
        sha=str(sha),
        subject=str(subject),
        author=str(author),
        timestamp=float(stamp) if stamp is not None else None,
    )
