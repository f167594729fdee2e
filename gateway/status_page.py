"""`GET /`: the status page, one self-contained HTML file (inline CSS and JS, nothing fetched from elsewhere).

The page is public and holds no data: it asks for an API token, keeps it in sessionStorage, and reads
everything through the API like any other client (REST for the status, an SSE ticket for live progress).
Its Content-Security-Policy allows exactly its own inline script and style (by hash, so an injected
script could not run) and connections to this origin only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

PATH = "/"
_INLINE = {"script": re.compile(r"<script>(.*?)</script>", re.S), "style": re.compile(r"<style>(.*?)</style>", re.S)}


@dataclass(frozen=True)
class StatusPage:
    body: bytes
    csp: str

    @classmethod
    def load(cls) -> StatusPage:
        html = resources.files("gateway").joinpath("static/status.html").read_text(encoding="utf-8")
        return cls(html.encode(), content_security_policy(html))


def _hashes(html: str, element: str) -> str:
    blocks = _INLINE[element].findall(html)
    digests = (base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() for block in blocks)
    return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"


def content_security_policy(html: str) -> str:
    """Only the page's own inline script and style blocks run; fetch and EventSource reach this origin only."""
    return "; ".join((
        "default-src 'none'",
        f"script-src {_hashes(html, 'script')}",
        f"style-src {_hashes(html, 'style')}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ))


PAGE = web.AppKey("status_page", StatusPage)


async def get_status_page(request: web.Request) -> web.Response:
    page = request.app[PAGE]
    return web.Response(body=page.body, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": page.csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    })


def setup(app: web.Application) -> None:
    app[PAGE] = StatusPage.load()  # read once: a missing file fails at start-up, not on the first visit
    app.router.add_get(PATH, get_status_page)
