"""/docs and /redoc: the API's viewers come from dirt itself and work with no network at all."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from dirt.web.run import WebServer
from tests.web.conftest import BROWSER

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def test_docs_page_names_only_assets_of_its_own_origin(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(u.startswith("/static/docs/") for u in urls), urls
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url


def test_docs_csp_allows_its_own_inline_script_and_no_other(client: TestClient) -> None:
    page = client.get("/docs")
    csp = page.headers["content-security-policy"]
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert "'unsafe-inline'" not in script_src and "http" not in csp
    (inline,) = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in script_src


def test_redoc_loads_no_web_fonts(client: TestClient) -> None:
    page = client.get("/redoc")
    assert page.status_code == 200
    assert "fonts.googleapis.com" not in page.text
    assert 'src="/static/docs/redoc.standalone.js"' in page.text


def test_pages_keep_their_strict_csp(client: TestClient) -> None:
    csp = client.get("/", headers=BROWSER).headers["content-security-policy"]
    assert "script-src 'self';" in csp and "sha256" not in csp


def offline(page: Any) -> tuple[list[str], list[str]]:
    """Block every request that leaves loopback; (blocked URLs, CSP complaints) as they come."""
    blocked: list[str] = []
    complaints: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https") and urlsplit(url).hostname not in LOOPBACK:
            blocked.append(url)
            route.abort()
        else:
            route.continue_()

    page.context.route("**/*", only_loopback)
    page.on(
        "console",
        lambda m: complaints.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return blocked, complaints


@pytest.mark.browser
def test_swagger_ui_lists_the_operations_offline(live_server: WebServer, page: Any) -> None:
    from playwright.sync_api import expect

    blocked, complaints = offline(page)
    page.goto(live_server.url + "docs")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    assert operations.count() >= 12
    paths = page.locator(".opblock-summary-path")
    expect(paths.get_by_text("/api/records/{record_id}", exact=True)).to_have_count(1)
    # Try it out: the viewer calls the API on its own origin.
    listing = page.locator(".opblock", has_text="Records, newest first").first
    listing.locator(".opblock-summary").click()
    listing.get_by_role("button", name="Try it out").click()
    listing.get_by_role("button", name="Execute").click()
    status = listing.locator(".live-responses-table tr.response .response-col_status")
    expect(status).to_have_text("200")
    assert blocked == [] and complaints == []


@pytest.mark.browser
def test_redoc_lists_the_operations_offline(live_server: WebServer, page: Any) -> None:
    from playwright.sync_api import expect

    blocked, complaints = offline(page)
    page.goto(live_server.url + "redoc")
    for summary in (
        "Records, newest first (keyset pages)",
        "Every node with its slots, load and health",
    ):
        expect(page.get_by_role("heading", name=summary)).to_be_visible()
    # ReDoc always shows Redocly's logo from their CDN: the CSP stops it before it is fetched,
    # and ReDoc hides an image that does not load. Nothing else reaches beyond dirt.
    assert blocked == []
    assert all("https://cdn.redoc.ly/redoc/logo-mini.svg" in c for c in complaints), complaints
