"""The demo page at ``/``: three static files shipped with the gateway, no CDN and no build step.

The page calls the public API like any client (same auth, limits and errors); it is served without a key because
it holds nothing but code. Its Content-Security-Policy allows only the gateway's own script and style files (no
inline script or style attributes) and calls back to the gateway alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Response

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8",
         "favicon.svg": "image/svg+xml"}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def add_page(app: FastAPI) -> None:
    """Routes ``/`` and ``/static/<file>``, kept out of the OpenAPI schema (they are not part of the API)."""
    contents = {name: (STATIC / name).read_bytes() for name in (*FILES, "index.html")}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(contents["index.html"], media_type="text/html; charset=utf-8", headers=HEADERS)

    for name, media_type in FILES.items():
        app.add_api_route(f"/static/{name}", _static(contents[name], media_type), methods=["GET"],
                          include_in_schema=False)


def _static(content: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def serve() -> Response:
        return Response(content, media_type=media_type, headers=HEADERS)

    return serve
