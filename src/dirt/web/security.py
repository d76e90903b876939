"""Response headers that keep user-supplied content inert on dirt's origin."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from dirt.models import Attachment

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def docs_csp(script_hashes: list[str]) -> str:
    """The CSP of /docs and /redoc: their viewers come from dirt's origin (no CDN); the inline
    script that starts one runs by its sha256 (base64); the viewers set inline styles and ReDoc
    runs its search in a blob: worker."""
    inline = "".join(f" 'sha256-{h}'" for h in script_hashes)
    return (
        f"default-src 'self'; script-src 'self'{inline}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; font-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    )


# An attachment shown inline may not run or load anything.
ATTACHMENT_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"

# Shown in the browser; everything else (HTML, SVG, XML, JavaScript, PDF, unknown) downloads.
INLINE_TYPES = frozenset(
    {
        "text/plain",
        "text/csv",
        "text/x-log",
        "application/json",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
    }
)

COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)


def shown_inline(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in INLINE_TYPES


def attachment_headers(attachment: Attachment) -> tuple[dict[str, str], str]:
    """The headers an attachment is served with, and its media type: shown inline only when
    harmless (INLINE_TYPES), else downloaded; never able to run or load anything."""
    kind = attachment.content_type.split(";")[0].strip().lower() or "application/octet-stream"
    inline = shown_inline(kind)
    if inline and kind.startswith("text/"):
        kind += "; charset=utf-8"
    disposition = "inline" if inline else "attachment"
    ascii_name = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
        for c in attachment.filename
    )
    headers = {
        "Content-Disposition": (
            f'{disposition}; filename="{ascii_name}"; '
            f"filename*=UTF-8''{quote(attachment.filename, safe='')}"
        ),
        "Content-Security-Policy": ATTACHMENT_CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=60",
    }
    return headers, kind


class SecurityHeaders:
    """ASGI middleware: nosniff, no framing, PAGE_CSP unless the route set its own."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in COMMON:
                    if name not in present:
                        headers.append((name, value))
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
