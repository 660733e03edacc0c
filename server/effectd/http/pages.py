"""The dashboard's static files at `/`, read once from the `effectd.dashboard` package. They carry no
data, so the gate serves them without the token; the page asks for it (or takes `#token=...` once)."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


class Pages:
    """The page, its script and its style sheet (GET and HEAD)."""

    def __init__(self) -> None:
        assets = resources.files("effectd.dashboard")
        self._bodies = {path: assets.joinpath(name).read_bytes() for path, (name, _) in _FILES.items()}

    def routes(self) -> list[Route]:
        return [Route(path, self.serve, methods=["GET", "HEAD"]) for path in _FILES]

    async def serve(self, request: Request) -> Response:
        path = request.url.path
        return Response(self._bodies[path], media_type=_FILES[path][1], headers=_HEADERS)
