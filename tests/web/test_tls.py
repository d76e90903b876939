"""HTTPS served by dirt itself: `dirt serve --certfile --keyfile` and `[web]` certfile/keyfile,
with a self-signed certificate made here by openssl."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import run_dirt
from tests.web.conftest import make_token, start_dirt, stop_dirt


def fetch(url: str, cafile: Path | None, **kwargs: object) -> tuple[int, bytes, dict[str, str]]:
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    request = urllib.request.Request(url, **kwargs)  # type: ignore[arg-type]
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return response.status, response.read(), dict(response.headers)


def read_events_until(url: str, cafile: Path, wanted: str) -> str:
    """What curl reads of the event stream, up to the line `wanted` (or its --max-time): the
    stream goes on, so curl is stopped once that line came, not left to run out its time."""
    curl = subprocess.Popen(
        ["curl", "-sN", "--cacert", str(cafile), "--max-time", "10", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert curl.stdout is not None
    read = ""
    try:
        for line in curl.stdout:
            read += line
            if line.strip() == wanted:
                break
    finally:
        curl.kill()
        curl.communicate()
    return read


def test_dirt_serve_speaks_https_with_the_given_certificate(
    project: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    token = make_token(project, "ci")
    proc, url = start_dirt(project, "serve", "--certfile", str(cert), "--keyfile", str(key))
    try:
        assert url.startswith("https://127.0.0.1:")
        status, body, _ = fetch(url + "api/records", cert)
        assert status == 200 and json.loads(body)["records"] == []
        record = json.dumps({"record": {"_id": "r1"}, "tasks": [{"name": "examples.simple"}]})
        status, body, _ = fetch(
            url + "api/records",
            cert,
            data=record.encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert status == 201, body
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch(url + "api/records", None)  # a real certificate check, not a stub
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            fetch(url.replace("https://", "http://") + "api/records", None)
        assert "event: hello" in read_events_until(url + "events", cert, "event: hello")
        login = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-D", "-", "--cacert", str(cert),
             "--data-urlencode", f"token={token}", url + "login"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        cookie = next(h for h in login.stdout.splitlines() if h.lower().startswith("set-cookie"))
        assert "Secure" in cookie and "HttpOnly" in cookie
    finally:
        code, log = stop_dirt(proc)
    assert code == 0, log


def test_web_keys_in_dirt_toml_and_relative_paths(
    project: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    shutil.copy(cert, project / "cert.pem")
    shutil.copy(key, project / "key.pem")
    config = project / "dirt.toml"
    config.write_text(
        config.read_text().replace(
            "[web]\n", '[web]\ncertfile = "cert.pem"\nkeyfile = "key.pem"\n', 1
        )
    )
    proc, url = start_dirt(project, "web")
    try:
        assert url.startswith("https://")
        assert fetch(url + "healthz", cert)[0] == 200
    finally:
        stop_dirt(proc)


def test_a_key_that_does_not_fit_is_a_clear_error(
    project: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _ = certificate
    wrong = tmp_path / "wrong.pem"
    wrong.write_text("not a key\n")
    result = run_dirt("serve", "--certfile", str(cert), "--keyfile", str(wrong), cwd=project)
    assert result.returncode == 2
    assert "HTTPS: cannot use certificate" in result.stderr
    alone = run_dirt("web", "--certfile", str(cert), cwd=project)
    assert alone.returncode == 2 and "needs both" in alone.stderr
