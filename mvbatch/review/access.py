"""Who may talk to the review server: its token, the Host it was bound to, its own origin.

Owns: `Access`, what a request must carry, and `Guard`, the ASGI middleware
that refuses (403) every request without it, before any route runs, and adds
the headers every answer carries (no framing, no sniffing, no referrer: the
page's URL holds the token).

The rules, in the order `Guard` checks them:

1. The Host header names the socket we bound (127.0.0.1, localhost or [::1]
   and our port on loopback): a page on another name that was made to resolve
   to 127.0.0.1 (DNS rebinding) is refused. Bound to a wildcard (`--host
   0.0.0.0`), any name with our port is accepted: the token still holds.
2. An Origin header, when sent, is the page's own (`http://` + Host): no other
   page, even another local one on another port, gets an answer it could act on.
3. The token, compared in constant time, from the `X-Mvbatch-Token` header,
   the `token` query parameter (the URL `mvbatch review` prints) or the
   `mvbatch_review` cookie the page sets. The cookie is ambient (a browser
   sends it by itself), so a request carrying only the cookie is accepted
   only when the browser says it comes from our own page or from the user
   (`Sec-Fetch-Site` `same-origin` or `none`), and never for a write:
   `POST /api/verdict` needs the header, which no other page can set without
   our consent (`request_token_source` tells the route where it came from).

Must not: log or echo the token (the refusal says what is missing, never what
was expected), or decide anything about verdicts (`app.py`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "mvbatch_review"
HEADER = "x-mvbatch-token"
QUERY = "token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")

TokenSource = Literal["header", "query", "cookie"]

# Every answer, a refusal included.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("0.0.0.0", "::", "")  # noqa: S104 - naming it, not binding


def url_host(host: str) -> str:
    """`host` as it stands in a URL: an IPv6 address in brackets."""
    bare = host.strip("[]")
    return f"[{bare}]" if ":" in bare else bare


@dataclass(frozen=True, slots=True)
class Access:
    """The token and the Host names a request must carry; None names: any (a wildcard bind)."""

    token: str
    port: int
    names: frozenset[str] | None

    @classmethod
    def bound(cls, token: str, host: str, port: int) -> Access:
        """What a server bound to `host:port` accepts: that name, and every loopback name
        on loopback; any name on a wildcard address."""
        if is_wildcard(host):
            return cls(token, port, None)
        names: Iterable[str] = (url_host(host),)
        if is_loopback(host):
            names = (*names, *LOOPBACK_NAMES)
        return cls(token, port, frozenset(n.lower() for n in names))

    def host_ok(self, header: str | None) -> bool:
        if not header:
            return False
        header = header.lower()
        if header.endswith("]") or ":" not in header:  # no port: the default one
            name, port = header, "80"
        else:
            name, _, port = header.rpartition(":")
        if port != str(self.port):
            return False
        return self.names is None or name in self.names

    def token_ok(self, candidate: str | None) -> bool:
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def source(self, connection: HTTPConnection) -> TokenSource | None:
        """Where this request's valid token came from, or None without one."""
        if self.token_ok(connection.headers.get(HEADER)):
            return "header"
        if self.token_ok(connection.query_params.get(QUERY)):
            return "query"
        if self.token_ok(connection.cookies.get(COOKIE)) and connection.headers.get(
            "sec-fetch-site", "none"
        ) in ("same-origin", "none"):
            return "cookie"
        return None


def request_token_source(connection: HTTPConnection) -> TokenSource | None:
    """Where `Guard` found the request's token (header, query or cookie)."""
    source: TokenSource | None = connection.scope.get("state", {}).get("token_source")
    return source


class Guard:
    """ASGI middleware: `Access`'s rules before any route, the security headers on every answer."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        if scope["type"] != "http":  # no websockets here
            return
        connection = HTTPConnection(scope)
        source, refusal = self.check(connection)
        if source is None:
            response = PlainTextResponse(refusal + "\n", status_code=403)
            await response(scope, receive, send_with_headers)
            return
        scope.setdefault("state", {})["token_source"] = source
        await self.app(scope, receive, send_with_headers)

    def check(self, connection: HTTPConnection) -> tuple[TokenSource | None, str]:
        """Where the request's token came from, or None and why it is refused."""
        host = connection.headers.get("host")
        if not self.access.host_ok(host):
            return None, "refused: this server answers only to the address it printed (Host)"
        origin = connection.headers.get("origin")
        if origin is not None and origin.lower() != f"http://{(host or '').lower()}":
            return None, "refused: a request from another origin"
        source = self.access.source(connection)
        if source is None:
            return None, (
                "refused: this review server needs its token; open the URL `mvbatch review` printed"
            )
        return source, ""
