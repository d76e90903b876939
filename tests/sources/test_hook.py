"""The post-receive hook: a real bare repository, real `git push`es, a real HTTP server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dirt.sources.git import pushed_commits
from dirt.sources.hook import HookError, install_hook, parse_hook_payload
from dirt.sources.push import Push, SourceError
from tests.conftest import have, need
from tests.httpstub import HttpStub, free_port, http_stub
from tests.sources.conftest import run_git

TOKEN = "s3cret-token"


@pytest.fixture
def stub() -> Iterator[HttpStub]:
    with http_stub() as server:
        server.status = 202
        yield server


def install(bare: Path, url: str, **options: str) -> Path:
    return install_hook(bare, f"{url}/hooks/git", token_env="DIRT_HOOK_TEST_TOKEN", **options)


def push(checkout: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`git push` from the checkout; returns what the pusher sees (hook output included)."""
    full = {**os.environ, "DIRT_HOOK_TEST_TOKEN": TOKEN, **(env or {})}
    done = subprocess.run(
        ["git", "push", "origin", *args],
        cwd=checkout,
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )
    assert done.returncode == 0, f"push failed: {done.stderr}"
    return done.stderr + done.stdout


def pushes_in(server: HttpStub) -> list[Push]:
    found = []
    for request in server.requests:
        parsed = parse_hook_payload(request.body, request.headers.get("x-dirt-delivery"))
        assert isinstance(parsed, Push)
        found.append(parsed)
    return found


def spool_files(bare: Path) -> list[Path]:
    return sorted((bare / "dirt-spool").glob("*.json"))


def test_a_push_posts_the_new_head_to_dirt(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    sha = commit("first")
    push(checkout, "main")
    [request] = stub.wait_for(1)
    assert (request.method, request.path) == ("POST", "/hooks/git")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    [update] = pushes_in(stub)[0].updates
    assert (update.ref, update.before, update.head.sha) == ("refs/heads/main", None, sha)
    assert update.head.subject == "first"
    assert update.head.author == "Ada Lovelace <ada@example.org>"


def test_the_pusher_sees_that_dirt_was_told(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    commit("first")
    assert "remote: dirt: sent 1 push(es)" in push(checkout, "main")


def test_the_repository_sent_is_the_one_given_at_install(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url, repository="ssh://git.example.org/srv/repo.git")
    commit("first")
    push(checkout, "main")
    stub.wait_for(1)
    assert pushes_in(stub)[0].repository == "ssh://git.example.org/srv/repo.git"


def test_the_commits_listed_are_those_the_push_brought_oldest_first(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    base = commit("base")
    push(checkout, "main")
    new = [commit("two"), commit("three")]
    push(checkout, "main")
    update = pushes_in(stub)[1].updates[0]
    assert update.before == base
    assert [c.sha for c in update.commits] == new
    assert [c.sha for c in update.commits] == [
        c.sha for c in pushed_commits(bare, "refs/heads/main", base, new[-1])[0]
    ]


def test_a_new_branch_lists_only_commits_no_other_branch_had(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    commit("base")
    push(checkout, "main")
    run_git(checkout, "switch", "-q", "-c", "feature/x")
    topic = commit("topic")
    push(checkout, "feature/x")
    update = pushes_in(stub)[1].updates[0]
    assert update.ref == "refs/heads/feature/x"
    assert [c.sha for c in update.commits] == [topic]


def test_one_push_of_two_branches_posts_both(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    sha = commit("shared")
    run_git(checkout, "branch", "other")
    push(checkout, "main", "other")
    [posted] = pushes_in(stub)
    assert sorted(u.ref for u in posted.updates) == ["refs/heads/main", "refs/heads/other"]
    # The commit is new to the repository: each ref lists it, dirt makes one record.
    assert all([c.sha for c in u.commits] == [sha] for u in posted.updates)


def test_an_annotated_tag_posts_the_commit_it_tags(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    sha = commit("release")
    push(checkout, "main")
    run_git(checkout, "tag", "-a", "-m", "v1", "v1.0")
    push(checkout, "v1.0")
    update = pushes_in(stub)[1].updates[0]
    assert (update.ref, update.head.sha, update.commits) == ("refs/tags/v1.0", sha, ())


def test_deleting_a_branch_posts_nothing(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    commit("base")
    run_git(checkout, "branch", "gone")
    push(checkout, "main", "gone")
    push(checkout, "--delete", "gone")
    assert len(stub.requests) == 1 and spool_files(bare) == []


def test_subjects_and_names_with_quotes_backslashes_and_tabs_arrive_intact(
    bare: Path,
    checkout: Path,
    commit: Callable[..., str],
    stub: HttpStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(bare, stub.url)
    subject = 'say "hi" \\ back\\slash\tand tab — ünïcode'
    monkeypatch.setenv("GIT_AUTHOR_NAME", 'O"Brien \\ Jr')
    commit(subject)
    push(checkout, "main")
    head = pushes_in(stub)[0].updates[0].head
    assert head.subject == subject.replace("\t", " ")
    assert head.author == 'O"Brien \\ Jr <ada@example.org>'


def test_a_push_while_dirt_is_down_succeeds_and_is_kept(
    bare: Path, checkout: Path, commit: Callable[..., str]
) -> None:
    install(bare, f"http://127.0.0.1:{free_port()}")
    commit("first")
    output = push(checkout, "main")
    assert "could not reach" in output and "1 push(es) kept in" in output
    assert len(spool_files(bare)) == 1


def test_the_next_push_delivers_the_kept_one_first(
    bare: Path, checkout: Path, commit: Callable[..., str]
) -> None:
    port = free_port()
    install(bare, f"http://127.0.0.1:{port}")
    first = commit("first")
    push(checkout, "main")
    with http_stub(port) as server:
        server.status = 202
        second = commit("second")
        assert "sent 2 push(es)" in push(checkout, "main")
        heads = [p.updates[0].head.sha for p in pushes_in(server)]
    assert heads == [first, second]
    assert spool_files(bare) == []


def test_a_retried_push_keeps_its_delivery_id(
    bare: Path, checkout: Path, commit: Callable[..., str]
) -> None:
    port = free_port()
    install(bare, f"http://127.0.0.1:{port}")
    commit("first")
    push(checkout, "main")
    kept = spool_files(bare)[0].stem
    with http_stub(port) as server:
        server.status = 202
        commit("second")
        push(checkout, "main")
        assert server.requests[0].headers["x-dirt-delivery"] == kept


def test_kept_pushes_are_named_to_sort_oldest_first(
    bare: Path, checkout: Path, commit: Callable[..., str]
) -> None:
    install(bare, f"http://127.0.0.1:{free_port()}")  # nobody answers: each push is kept
    for n in range(3):
        commit(f"change {n}")
        push(checkout, "main")
    names = [f.stem for f in spool_files(bare)]
    assert all(re.fullmatch(r"\d{14}-\d{10}", name) for name in names), names
    subjects = [
        json.loads(f.read_text())["updates"][0]["head"]["subject"] for f in spool_files(bare)
    ]
    assert subjects == ["change 0", "change 1", "change 2"]


def test_a_server_error_keeps_the_push_for_later(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    stub.answer_next(503)
    commit("first")
    assert "HTTP 503" in push(checkout, "main")
    assert len(spool_files(bare)) == 1


def test_a_payload_dirt_refuses_is_moved_aside_not_retried(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    stub.answer_next(422)
    commit("first")
    assert "refused push" in push(checkout, "main")
    assert spool_files(bare) == []
    assert len(list((bare / "dirt-spool" / "rejected").glob("*.json"))) == 1


def test_an_unset_token_variable_is_reported_to_the_pusher(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    commit("first")
    output = push(checkout, "main", env={"DIRT_HOOK_TEST_TOKEN": ""})
    assert "$DIRT_HOOK_TEST_TOKEN is not set" in output
    assert "authorization" not in stub.requests[0].headers


def test_a_host_without_python_posts_with_curl(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub, tmp_path: Path
) -> None:
    need(have("curl"), "curl")
    bin_dir = tmp_path / "bin-without-python"
    bin_dir.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for program in Path(folder).iterdir() if Path(folder).is_dir() else ():
            target = bin_dir / program.name
            if not program.name.startswith("python") and not target.exists():
                target.symlink_to(program)
    assert shutil.which("python3", path=str(bin_dir)) is None
    install(bare, stub.url)
    sha = commit("first")
    output = push(checkout, "main", env={"PATH": str(bin_dir)})
    assert "sent 1 push(es)" in output
    [request] = stub.requests
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["user-agent"] == "dirt-post-receive/1"
    assert pushes_in(stub)[0].updates[0].head.sha == sha


def test_installing_again_replaces_dirts_hook(bare: Path, stub: HttpStub) -> None:
    install(bare, "http://old.example.org")
    hook = install(bare, stub.url)
    assert stub.url in hook.read_text() and "old.example.org" not in hook.read_text()
    assert os.access(hook, os.X_OK)


def test_another_post_receive_hook_is_not_overwritten(bare: Path) -> None:
    theirs = bare / "hooks" / "post-receive"
    theirs.write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(HookError, match="exists and is not dirt's"):
        install(bare, "http://dirt.example.org")
    assert theirs.read_text() == "#!/bin/sh\necho mine\n"


def test_force_keeps_the_other_hook_beside_dirts(bare: Path) -> None:
    (bare / "hooks" / "post-receive").write_text("#!/bin/sh\necho mine\n")
    install(bare, "http://dirt.example.org", force=True)
    assert (bare / "hooks" / "post-receive.before-dirt").read_text() == "#!/bin/sh\necho mine\n"


def test_install_rejects_a_bad_url_and_token_variable_at_once(bare: Path) -> None:
    with pytest.raises(HookError) as info:
        install_hook(bare, "ftp://x", token_env="NOT-A-NAME")
    assert "--url" in str(info.value) and "--token-env" in str(info.value)


def test_install_into_a_folder_that_is_no_repository_fails(tmp_path: Path, git_env: dict) -> None:
    with pytest.raises(HookError, match="not a git checkout or repository"):
        install_hook(tmp_path, "http://dirt.example.org")


def test_a_payload_that_is_not_json_is_a_400() -> None:
    with pytest.raises(SourceError, match="not JSON") as info:
        parse_hook_payload(b"{nope")
    assert info.value.status == 400


def test_a_malformed_payload_lists_every_problem() -> None:
    body = {"dirt_hook": 1, "repository": "", "updates": [{"ref": "main", "head": {}}]}
    with pytest.raises(SourceError) as info:
        parse_hook_payload(json.dumps(body).encode())
    message = str(info.value)
    assert "'repository'" in message and "updates[0].ref" in message
    assert "updates[0].head.sha" in message


def test_a_payload_from_another_hook_version_says_reinstall() -> None:
    with pytest.raises(SourceError, match="reinstall the hook"):
        parse_hook_payload(b'{"dirt_hook": 7}')


def test_a_checkout_gets_the_hook_in_its_git_folder(
    checkout: Path, commit: Callable[..., str]
) -> None:
    commit("first")
    hook = install_hook(checkout, "http://dirt.example.org/hooks/git")
    assert hook == checkout / ".git" / "hooks" / "post-receive"
    assert f"DIRT_REPOSITORY='{checkout}'" in hook.read_text()


def test_a_push_while_another_is_sending_is_queued_for_that_sender(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    (bare / "dirt-spool" / ".lock").mkdir(parents=True)  # another push holds the sender's lock
    commit("first")
    assert "this one is queued" in push(checkout, "main")
    assert stub.requests == [] and len(spool_files(bare)) == 1


def test_a_lock_left_by_a_killed_hook_is_broken(
    bare: Path, checkout: Path, commit: Callable[..., str], stub: HttpStub
) -> None:
    install(bare, stub.url)
    lock = bare / "dirt-spool" / ".lock"
    lock.mkdir(parents=True)
    old = time.time() - 3600
    os.utime(lock, (old, old))
    commit("first")
    assert "sent 1 push(es)" in push(checkout, "main")
    assert not lock.exists()
