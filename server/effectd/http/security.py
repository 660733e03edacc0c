"""Who may reach the server: the bind (a public address needs a token) and the gate every request
passes first.

The gate checks the `Host` and `Origin` headers against DNS rebinding (a bad `Host` is 421, a bad
`Origin` 403), then, when the server has a token, `/mcp` and `/api/*` need
`Authorization: Bearer <token>` (401 otherwise). The dashboard's static files carry no data and are
served without the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from effectd.errors import ConfigError
from effectd.http.wire import error_response

# --- binding -------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_http_options(host: str, token: str | None) -> None:
    """Refuses a bind that would expose the server without a token (ConfigError: exit 2)."""
    if token is not None and not token.strip():
        raise ConfigError("the token (--token or EFFECTD_TOKEN) is empty; give a non-empty secret or leave it unset")
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve HTTP on {host} without a token: anyone who can reach it could run and cancel "
            "effects. Give --token-file PATH (or set EFFECTD_TOKEN), or bind a loopback address (--host 127.0.0.1)"
        )


def open_listener(host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> socket.socket:
    """Checks the options and binds the listening socket (port 0: any free port); ConfigError when it cannot."""
    check_http_options(host, token)
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot serve HTTP on {host!r}: {exc.strerror}; give --host an address or name") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
        sock.set_inheritable(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port (0 takes any free one)"
        ) from exc
    return sock


# --- the gate: DNS rebinding and the token -------------------------------------------------------


def _host_and_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "", parts.port or default_port)
    except ValueError:
        return None


class Gate:
    """ASGI middleware in front of everything: Host and Origin checks, then the bearer token."""

    def __init__(self, app: ASGIApp, *, loopback: bool, port: int, token: str | None) -> None:
        self.app = app
        self.loopback = loopback
        self.port = port
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal = self.refusal(scope["path"], host, headers.get("origin"), headers.get("authorization"))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, path: str, host: str, origin: str | None, authorization: str | None) -> Response | None:
        if not self.host_allowed(host):
            return error_response(
                421, f"Host {host!r} is not served here (DNS rebinding protection); use 127.0.0.1 or localhost"
            )
        if origin is not None and not self.origin_allowed(origin, host):
            return error_response(403, f"Origin {origin!r} may not call this server")
        if self.token is not None and (path == "/mcp" or path.startswith("/mcp/") or path.startswith("/api/")):
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                response = error_response(401, "missing or wrong bearer token: send Authorization: Bearer <token>")
                response.headers["WWW-Authenticate"] = 'Bearer realm="effectd"'
                return response
        return None

    def host_allowed(self, host: str) -> bool:
        """On a loopback bind the Host must name a loopback address; a wider bind has the token instead."""
        if not self.loopback:
            return True
        parsed = _host_and_port(host, 80)
        return parsed is not None and is_loopback(parsed[0])

    def origin_allowed(self, origin: str, host: str) -> bool:
        """A loopback origin on the bound port, or the same origin as the page (`Origin` = the request's host)."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        try:
            origin_port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        if is_loopback(parts.hostname or "") and origin_port == self.port:
            return True
        return parts.netloc.lower() == host.lower() and self.host_allowed(host)
