"""Behind a reverse proxy: X-Forwarded-For/-Proto believed only from `[web]
forwarded_allow_ips`; with a proxy configured the server serves others, so every read and write
needs a token."""

from __future__ import annotations

import getpass
import json
import urllib.error
import urllib.request

import pytest

from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.run import WebServer


def request(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str]]:
    body = json.dumps({"record": {"_id": "r9"}}).encode() if method == "POST" else None
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers)


def test_forwarded_headers_are_ignored_without_a_configured_proxy(seeded: Service) -> None:
    server = WebServer(create_app(seeded, bind_host="127.0.0.1"), "127.0.0.1", 0)
    server.start()
    try:
        # A local process that claims to forward for someone else is still a local process.
        status, _ = request(server.url + "api/records", "POST", **{"X-Forwarded-For": "1.2.3.4"})
        assert status == 201
    finally:
        server.stop()
    last = seeded.audit()[-1]
    # Audited under the user whose process held the connection (from /proc/net/tcp).
    assert (last.actor, last.via, last.client) == (getpass.getuser(), "loopback", "127.0.0.1")


def test_behind_a_configured_proxy_the_forwarded_client_counts(seeded: Service) -> None:
    seeded.settings.web.forwarded_allow_ips = ["127.0.0.1"]
    token = seeded.create_token("ci")
    server = WebServer(create_app(seeded, bind_host="127.0.0.1"), "127.0.0.1", 0)
    server.start()
    try:
        proxied = {"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https"}
        assert request(server.url + "api/records", **proxied)[0] == 401
        assert request(server.url + "api/records", "POST", **proxied)[0] == 401
        # Even a request the proxy sent without the header: behind a proxy, nothing is local.
        assert request(server.url + "api/records")[0] == 401
        status, _ = request(
            server.url + "api/records", "POST", Authorization=f"Bearer {token}", **proxied
        )
        assert status == 201
        login = urllib.request.Request(
            server.url + "login", data=f"token={token}".encode(), method="POST", headers=proxied
        )
        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(login, timeout=10)
        with redirect.value as answer:
            assert "Secure" in answer.headers["set-cookie"], "the proxy spoke HTTPS"
    finally:
        server.stop()
    last = [e for e in seeded.audit() if e.via == "token"][-1]
    assert (last.actor, last.client) == ("ci", "203.0.113.5")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None
