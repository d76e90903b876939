"""Commits read with the real `git` CLI, from a checkout or a bare repository.

`submit_documents` is `dirt submit --git [REV...]`: one record per named commit (a range
`A..B` names every commit in it, oldest first). `pushed_commits` is what a push brought: the
commits reachable from the new head and from nothing the repository had before.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dirt.ci_config import CiSettings
from dirt.errors import DirtError
from dirt.sources.push import ZERO_SHA, Commit, commit_documents

# Fields of one commit, NUL-separated; with `git log -z` commits are NUL-separated too, so no
# subject or author name can be mistaken for a field (neither can hold a NUL).
_FORMAT = "%H%x00%ct%x00%an <%ae>%x00%s"
_FIELDS = 4
MAX_RANGE = 1000  # commits one REV range may name


class GitError(DirtError):
    """git refused, or the path is not a repository, or a REV names no commit."""


def git(path: Path | str, *args: str, stdin: str | None = None) -> str:
    """Run `git -C path ARGS`; its stdout (UTF-8, undecodable bytes replaced), or GitError."""
    env = {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(
            ["git", "-C", str(path), *args],
            input=stdin.encode("utf-8") if stdin is not None else None,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
    except FileNotFoundError:
        raise GitError("git is not installed (no `git` on PATH)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {' '.join(args)} in {path} took over 60 s") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit {done.returncode}"
        raise GitError(f"git {' '.join(args)} in {path}: {message}")
    return done.stdout.decode("utf-8", "replace")


def repository_root(path: Path | str) -> Path:
    """The checkout's top folder, or a bare repository's folder; GitError when neither."""
    try:
        if git(path, "rev-parse", "--is-bare-repository").strip() == "true":
            return Path(git(path, "rev-parse", "--absolute-git-dir").strip())
        return Path(git(path, "rev-parse", "--show-toplevel").strip())
    except GitError as exc:
        raise GitError(f"{path} is not a git checkout or repository: {exc}") from None


def resolve(path: Path | str, rev: str) -> str:
    """The full sha of the commit `rev` names, or GitError saying it names none."""
    try:
        found = git(
            path, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"
        )
        return found.strip()
    except GitError:
        raise GitError(f"{rev!r} names no commit in {path}") from None


def _parse_log(text: str) -> list[Commit]:
    fields = text.split("\0")
    commits = []
    for start in range(0, len(fields) - _FIELDS + 1, _FIELDS):
        sha, stamp, author, subject = fields[start : start + _FIELDS]
        commits.append(Commit(sha=sha, subject=subject, author=author, timestamp=float(stamp)))
    return commits


def read_commits(path: Path | str, shas: Sequence[str]) -> list[Commit]:
    """The commits `shas` (full shas), in that order, read in one git call."""
    if not shas:
        return []
    text = git(
        path,
        "log",
        "-z",
        "--no-walk=unsorted",
        "--stdin",
        f"--format={_FORMAT}",
        stdin="\n".join(shas) + "\n",
    )
    return _parse_log(text)


def range_shas(path: Path | str, rev_range: str) -> list[str]:
    """The commits of `A..B` (or `A...B`), oldest first; GitError when it names none."""
    text = git(
        path, "rev-list", "--reverse", f"--max-count={MAX_RANGE + 1}", "--end-of-options", rev_range
    )
    shas = text.split()
    if len(shas) > MAX_RANGE:
        raise GitError(f"{rev_range!r} names over {MAX_RANGE} commits; name a shorter range")
    if not shas:
        raise GitError(f"{rev_range!r} names no commits in {path}")
    return shas


def ref_of(path: Path | str, rev: str) -> str | None:
    """The full ref `rev` stands for (`main` or `HEAD` on main: refs/heads/main), else None."""
    if rev.startswith("-"):  # never an option (resolve() refuses it as a rev anyway)
        return None
    try:
        name = git(path, "rev-parse", "--symbolic-full-name", rev).strip()
    except GitError:
        return None
    return name if name.startswith("refs/") else None


def default_repository(path: Path | str) -> str:
    """What a node should clone: the URL of the current branch's remote, else of `origin`,
    else this repository's own folder."""
    root = repository_root(path)
    remote = ""
    branch = ref_of(path, "HEAD")
    if branch and branch.startswith("refs/heads/"):
        remote = _config(path, f"branch.{branch[len('refs/heads/') :]}.remote")
    for name in (remote, "origin"):
        if name and name != ".":
            url = _config(path, f"remote.{name}.url")
            if url:
                return url
    return str(root)


def _config(path: Path | str, key: str) -> str:
    try:
        return git(path, "config", "--get", key).strip()
    except GitError:  # git config exits 1 when the key is unset
        return ""


def pushed_commits(
    git_dir: Path | str, ref: str, before: str | None, after: str, limit: int = MAX_RANGE
) -> tuple[list[Commit], bool]:
    """The commits new to the repository a push of `ref` from `before` to `after` brought,
    oldest first, and whether there were more than `limit`. Call after the refs moved (as a
    post-receive hook runs): every other ref, and `before`, bound what is new."""
    lines = [after]
    if before and before != ZERO_SHA:
        lines.append(f"^{before}")
    others = git(git_dir, "for-each-ref", "--format=%(objectname)\t%(refname)")
    for line in others.splitlines():
        sha, _, name = line.partition("\t")
        if name != ref:
            lines.append(f"^{sha}")
    text = git(
        git_dir,
        "log",
        "-z",
        "--stdin",
        f"--max-count={limit + 1}",
        f"--format={_FORMAT}",
        stdin="\n".join(lines) + "\n",
    )
    commits = _parse_log(text)
    truncated = len(commits) > limit
    return list(reversed(commits[:limit])), truncated


def submit_documents(
    path: Path | str,
    revs: Sequence[str],
    ci: CiSettings,
    *,
    tasks: Sequence[str] | None = None,
    repository: str | None = None,
) -> list[dict[str, Any]]:
    """`dirt submit --git [REV...]` (default HEAD): a record per named commit, with its tasks.

    `repository` (default `[ci] repository`, else `default_repository`) is what nodes clone.
    Every REV is checked before anything is returned; GitError names the first bad one.
    """
    revs = list(revs) or ["HEAD"]
    clone = repository or ci.repository or default_repository(path)
    named: dict[str, str | None] = {}  # sha -> ref, in order
    for rev in revs:
        if ".." in rev:
            ref = ref_of(path, rev.rsplit(".", 1)[-1] or "HEAD")
            for sha in range_shas(path, rev):
                named.setdefault(sha, ref)
        else:
            named.setdefault(resolve(path, rev), ref_of(path, rev))
    docs: list[dict[str, Any]] = []
    for commit in read_commits(path, list(named)):
        docs.extend(
            commit_documents(commit, ref=named[commit.sha], repository=clone, ci=ci, tasks=tasks)
        )
    return docs
