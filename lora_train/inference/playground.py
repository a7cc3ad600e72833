"""The web playground of `lora-serve` (`/`), and the security headers every response carries.

The page is static (lora_train/playground/: index.html, *.js, style.css, shipped in the package) and talks to the
server only through its public API, with the API key the user types in, so it adds no route that needs protecting.
It is served by default only when the server listens on a loopback address: `playground=true|false` decides
otherwise. Every response carries a Content-Security-Policy: the page may run only its own scripts, talk only to
this server and show images only from it or from blob: URLs (the loss plot, fetched with the key); API responses
may load nothing at all. Together with the page inserting everything it shows as text, a model output or a card
field holding markup can never run.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from lora_train.errors import UserError

STATIC = Path(__file__).resolve().parents[1] / "playground"
# URL -> (file in STATIC, media type). A fixed table: no path from the request ever reaches the file system.
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/playground/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.ico": ("favicon.png", "image/png"),  # browsers ask for it on every page load; a PNG is fine for all
    **{f"/playground/{n}": (n, "text/javascript; charset=utf-8")
       for n in ("app.js", "api.js", "columns.js", "cards.js", "export.js")},
}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                  (b"x-frame-options", b"DENY")]


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def enabled(setting: bool | None, host: str) -> bool:
    """playground=null: on only on a loopback address (a page reachable from the network is opted into)."""
    return is_loopback(host) if setting is None else bool(setting)


class SecurityHeaders:
    """ASGI middleware that adds the CSP and friends to every HTTP response, streamed ones included (it touches
    only the response's start message, so streaming and client disconnects pass through unchanged)."""

    def __init__(self, app, page_paths: frozenset[str] = frozenset()):
        self.app, self.page_paths = app, page_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = (PAGE_CSP if scope.get("path") in self.page_paths else API_CSP).encode()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(b"content-security-policy", csp)] + COMMON_HEADERS
                message = {**message, "headers": list(message.get("headers", []))
                           + [(k, v) for k, v in extra if k not in names]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def load_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once at start (a missing one means a broken install: say which)."""
    out = {}
    for url, (name, media) in FILES.items():
        path = STATIC / name
        if not path.is_file():
            raise UserError(f"the playground's {name} is missing from {STATIC}: reinstall lora-train")
        out[url] = (path.read_bytes(), media)
    return out


def mount(app, on: bool) -> None:
    """Security headers on every response; the page's routes when `on`."""
    files = load_files() if on else {}
    app.add_middleware(SecurityHeaders, page_paths=frozenset(files))
    if not on:
        return
    from fastapi.responses import Response

    def route(url: str):
        body, media = files[url]

        async def serve_file():
            return Response(body, media_type=media, headers={"cache-control": "no-cache"})

        app.add_api_route(url, serve_file, methods=["GET"], include_in_schema=False)

    for url in files:
        route(url)
