"""The API's viewers, /docs (Swagger UI) and /redoc (ReDoc), from assets that ship in a Python
package (fastapi-offline) and that dirt serves itself: they work offline, with no CDN.

The page FastAPI writes for Swagger UI starts it with an inline script; its response carries a
Content-Security-Policy that allows exactly that script (by its sha256), not inline scripts in
general.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from dirt.web.security import docs_csp

ASSETS_URL = "/static/docs"
# The package and its folder that hold swagger-ui-bundle.js, swagger-ui.css,
# redoc.standalone.js and favicon.png.
ASSETS_PACKAGE = ("fastapi_offline", "static")

INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


def mount_assets(app: FastAPI) -> None:
    """Serve the viewers' files under ASSETS_URL (before any mount that would shadow it)."""
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    """The page with a CSP that lets its own inline scripts run, and no other."""
    body = bytes(page.body).decode("utf-8")
    hashes = [
        base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
        for script in INLINE_SCRIPT.findall(body)
    ]
    page.headers["Content-Security-Policy"] = docs_csp(hashes)
    page.headers["Cache-Control"] = "no-store"
    return page


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _openapi_url(request: Request) -> str:
    return _root(request) + (request.app.openapi_url or "/openapi.json")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title}: API",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=None,
        # No validator badge: it would send the schema to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    return _with_csp(page)


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title}: API",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    return _with_csp(page)
