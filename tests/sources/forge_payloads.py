"""Push events shaped as GitHub and GitLab document them, and their signed headers."""

from __future__ import annotations

from typing import Any

from dirt.sources.webhooks import github_signature

SECRET = "It's a Secret to Everybody"
HEAD = "1481a2de7b2a7d02428ad93446ab166be7793fbb"
PARENT = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"


def github_payload(**changes: Any) -> dict[str, Any]:
    """A push event shaped as GitHub documents it (trimmed to the fields dirt reads, and more)."""
    payload = {
        "ref": "refs/heads/main",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": HEAD,
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": "https://github.com/octo/hello/compare/6113728f27ae...1481a2de7b2a",
        "commits": [
            {
                "id": PARENT,
                "message": "Fix the build\n\nlong explanation",
                "timestamp": "2024-05-05T19:40:15-04:00",
                "url": f"https://github.com/octo/hello/commit/{PARENT}",
                "author": {"name": "Mona", "email": "mona@example.org", "username": "mona"},
                "distinct": True,
            },
            {
                "id": HEAD,
                "message": "Add the frobnicator",
                "timestamp": "2024-05-05T19:41:00Z",
                "url": f"https://github.com/octo/hello/commit/{HEAD}",
                "author": {"name": "Mona", "email": "mona@example.org", "username": "mona"},
                "distinct": True,
            },
        ],
        "head_commit": {
            "id": HEAD,
            "message": "Add the frobnicator",
            "timestamp": "2024-05-05T19:41:00Z",
            "url": f"https://github.com/octo/hello/commit/{HEAD}",
            "author": {"name": "Mona", "email": "mona@example.org", "username": "mona"},
        },
        "repository": {
            "full_name": "octo/hello",
            "clone_url": "https://github.com/octo/hello.git",
            "html_url": "https://github.com/octo/hello",
        },
        "pusher": {"name": "mona", "email": "mona@example.org"},
    }
    payload.update(changes)
    return payload


def signed(body: bytes, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": github_signature(secret, body),
        "Content-Type": "application/json",
    }


def gitlab_payload(**changes: Any) -> dict[str, Any]:
    """A push event shaped as GitLab documents it."""
    payload = {
        "object_kind": "push",
        "event_name": "push",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
        "after": HEAD,
        "ref": "refs/heads/master",
        "checkout_sha": HEAD,
        "user_name": "John Smith",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": "Diaspora",
            "web_url": "http://example.com/mike/diaspora",
            "git_ssh_url": "git@example.com:mike/diaspora.git",
            "git_http_url": "http://example.com/mike/diaspora.git",
            "path_with_namespace": "mike/diaspora",
        },
        "commits": [
            {
                "id": PARENT,
                "message": "fixed readme",
                "title": "fixed readme",
                "timestamp": "2012-01-03T23:36:29+02:00",
                "url": f"http://example.com/mike/diaspora/commit/{PARENT}",
                "author": {"name": "GitLab dev user", "email": "gitlabdev@dv6700.(none)"},
            },
            {
                "id": HEAD,
                "message": "Update Catalan translation to e38cb41.\n\nSee merge request !1",
                "title": "Update Catalan translation to e38cb41.",
                "timestamp": "2012-01-04T10:00:00+02:00",
                "url": f"http://example.com/mike/diaspora/commit/{HEAD}",
                "author": {"name": "Jordi Mallach", "email": "jordi@softcatala.org"},
            },
        ],
        "total_commits_count": 2,
    }
    payload.update(changes)
    return payload


def gitlab_headers(token: str = SECRET, event: str = "Push Hook") -> dict[str, str]:
    return {
        "X-Gitlab-Event": event,
        "X-Gitlab-Token": token,
        "Idempotency-Key": "f3c5e5b0-6a7b-4e7c-9d1e-0a1b2c3d4e5f",
        "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
    }
