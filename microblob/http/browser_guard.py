"""Keeps web pages from driving the server.

A server on loopback without a token is still reachable from every page the user's browser has open:
a page can send "simple" cross-origin requests (a ``<form>``, a ``no-cors`` ``fetch``) without asking
first, and by DNS rebinding it can make its own name point at 127.0.0.1 and then read answers too.
Loopback is not a wall, so two checks run before anything else:

- **Host**: the ``Host`` header must name this server: an IP address (a browser that sends an address
  is on a page of that very address, so no other site is involved), a loopback name (``localhost``,
  ``*.localhost``), this machine's name (``HOST``, ``HOST.local``), or a name given in `allowed_hosts`.
  Anything else is a rebound name: 421.
- **Cross-site writes**: a request that changes state (any method but GET/HEAD/OPTIONS) is refused
  (403) when its ``Origin`` or ``Sec-Fetch-Site`` shows another origin, unless `cors_origins` allows
  that origin. A POST that a page could send without a CORS preflight (no body type, or a form type:
  text/plain, urlencoded, multipart) must also prove it is not one: carry a header a page can only
  send after a preflight (``Authorization``, ``X-Requested-With``) or a same-origin ``Origin``.

Allowed origins get CORS answers from Starlette's `CORSMiddleware` (inside this guard).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._exceptions import InvalidArgument

if TYPE_CHECKING:  # the client imports CSRF_HEADER and needs no Starlette
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["CSRF_HEADER", "CrossSiteGuard", "HostGuard", "check_allowed_hosts", "check_cors_origins",
           "guard_middleware"]

# The header microblob's own clients add to uploads: a page cannot send it cross-origin unasked.
CSRF_HEADER = "X-Requested-With"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _split_host(host: str) -> tuple[str, int | None]:
    """'Name:port', '[v6]:port', 'name' -> (lowercased name or address, port or None)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = (host[1:end], host[end + 1 :]) if end > 0 else (host, "")
    else:
        name, sep, rest = host.rpartition(":")
        if not sep or ":" in name:  # no port, or a bare IPv6 address
            name, rest = host, ""
        else:
            rest = ":" + rest
    port = None
    if rest.startswith(":") and rest[1:].isdigit():
        port = int(rest[1:])
    return name.rstrip("."), port


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_allowed_hosts(hosts: Iterable[str] | None) -> tuple[str, ...]:
    """Validated host patterns: names, ``*.suffix`` wildcards, or ``*`` (any Host)."""
    if hosts is None:
        return ()
    if isinstance(hosts, str):
        hosts = [hosts]
    out = []
    for host in hosts:
        if not isinstance(host, str) or not host.strip():
            raise InvalidArgument(f"allowed host {host!r}: expected a host name such as 'pi.lab.example'")
        name = host.strip().lower().rstrip(".")
        if "/" in name or " " in name or (name.count("*") and name != "*" and not name.startswith("*.")):
            raise InvalidArgument(f"allowed host {host!r}: a name, '*.suffix', or '*' (no scheme, no path)")
        out.append(_split_host(name)[0] if not name.startswith("*") else name)
    return tuple(out)


def check_cors_origins(origins: Iterable[str] | None) -> tuple[str, ...]:
    """Validated origins ``scheme://host[:port]`` (or ``*``) that may call the server from a browser."""
    if origins is None:
        return ()
    if isinstance(origins, str):
        origins = [origins]
    out = []
    for origin in origins:
        if origin == "*":
            out.append(origin)
            continue
        try:
            parts = urlsplit(origin) if isinstance(origin, str) else None
            _ = parts and parts.port
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or (
                parts.path not in ("", "/") or parts.query or parts.fragment or parts.username):
            raise InvalidArgument(f"CORS origin {origin!r}: expected scheme://host[:port], e.g. http://localhost:8000")
        out.append(_origin_key(origin))
    return tuple(out)


def _origin_key(origin: str) -> str:
    """scheme://host:port with the default port spelled out, lowercased: one spelling per origin."""
    try:
        parts = urlsplit(origin.strip())
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is no port: an origin nothing else equals
        return f"invalid:{origin}"
    host = (parts.hostname or "").rstrip(".")
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _as_browser_sends(origin: str) -> str:
    """The spelling of an origin in a browser's Origin header: no default port, no trailing slash."""
    scheme, rest = _origin_key(origin).split("://", 1)
    host, _, port = rest.rpartition(":")
    return f"{scheme}://{host}" if int(port) == _DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"


def _machine_names() -> set[str]:
    try:
        name = socket.gethostname().lower().rstrip(".")
    except OSError:
        return set()
    if not name:
        return set()
    short = name.split(".", 1)[0]
    # mDNS: a Raspberry Pi is usually reached as raspberrypi.local
    return {name, short, f"{short}.local"}


class _Guard:
    """ASGI middleware answering a JSON refusal when `_refusal` finds one."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] = (), cors_origins: Sequence[str] = ()) -> None:
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.names = _machine_names() | {h for h in allowed_hosts if not h.startswith("*")}
        self.suffixes = tuple(h[1:] for h in allowed_hosts if h.startswith("*.")) + (".localhost",)
        self.any_origin = "*" in cors_origins
        self.origins = frozenset(o for o in cors_origins if o != "*")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key, value)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            from starlette.responses import JSONResponse

            status, error, detail = refusal
            await JSONResponse({"error": error, "detail": detail}, status_code=status)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        raise NotImplementedError


class HostGuard(_Guard):
    """421 for a Host header that is not one of this server's names (first of all middleware)."""

    def host_allowed(self, name: str) -> bool:
        if self.any_host or _is_address(name) or name in ("localhost", "localhost.localdomain"):
            return True
        return name in self.names or name.endswith(self.suffixes)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        raw_host = headers.get(b"host", b"").decode("latin-1")
        name, _ = _split_host(raw_host)
        if not name:
            return 400, "BadRequest", "the request has no Host header"
        if not self.host_allowed(name):
            return (421, "MisdirectedRequest",
                    f"Host {raw_host!r:.200} is not a name of this server (a page on another site may have "
                    f"rebound its name to this address); to serve under this name, start the server with "
                    f"--allowed-host {name[:200]}")
        return None


class CrossSiteGuard(_Guard):
    """403 for a state-changing request a page of another origin sent or could have sent (after the token
    check: a request without the token is told so first)."""

    def origin_allowed(self, origin: str) -> bool:
        return self.any_origin or _origin_key(origin) in self.origins

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        method = scope.get("method", "GET")
        if scope["type"] != "http" or method in _SAFE_METHODS:
            return None  # a websocket handshake is a GET; no route takes one
        origin = headers.get(b"origin", b"").decode("latin-1").strip()
        own = f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1').strip().lower()}"
        real = bool(origin) and origin.lower() != "null"  # "null": a sandboxed frame or a file:// page
        allowed = real and (_origin_key(origin) == _origin_key(own) or self.origin_allowed(origin))
        if origin and not allowed:
            return (403, "CrossOriginRequest",
                    f"a page of {origin[:200]!r} may not {method} here; to allow it, start the server with "
                    f"--cors-origin {origin[:200]}")
        fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
        if fetch_site and fetch_site not in ("same-origin", "none") and not allowed:
            return (403, "CrossOriginRequest",
                    f"a {fetch_site[:40]} page may not {method} here (Sec-Fetch-Site: {fetch_site[:40]})")
        if method == "POST" and not allowed and self._forgeable(headers):
            return (403, "CrossOriginRequest",
                    "a web page could send this POST without asking (no Content-Type, or a form type such "
                    f"as text/plain): add the header '{CSRF_HEADER}: microblob' (or a bearer token, or "
                    "Content-Type: application/json or a binary type)")
        return None

    @staticmethod
    def _forgeable(headers: dict[bytes, bytes]) -> bool:
        """True for a POST a browser would send cross-origin without a preflight."""
        if headers.get(b"authorization") or headers.get(CSRF_HEADER.lower().encode()):
            return False
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
        return not ctype or ctype in _FORM_TYPES


def _json_cors() -> type:
    """Starlette's CORS middleware, its refused preflights answered in JSON like every other 4xx."""
    from starlette.datastructures import Headers
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import JSONResponse, Response

    class JSONCORSMiddleware(CORSMiddleware):
        def preflight_response(self, request_headers: Headers) -> Response:
            response = super().preflight_response(request_headers)
            if response.status_code < 400:
                return response
            headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
            return JSONResponse({"error": "PreflightRefused", "detail": bytes(response.body).decode(errors="replace")},
                                status_code=response.status_code, headers=headers)

    return JSONCORSMiddleware


def guard_middleware(allowed_hosts: Any, cors_origins: Any, inner: Sequence[Any] = ()) -> list[Any]:
    """Outermost first: the Host check, CORS answers for allowed origins, then `inner` (the token check),
    then the cross-site-write check."""
    from starlette.middleware import Middleware

    hosts, origins = check_allowed_hosts(allowed_hosts), check_cors_origins(cors_origins)
    stack = [Middleware(HostGuard, allowed_hosts=hosts)]
    if origins:
        allow = ["*"] if "*" in origins else [_as_browser_sends(o) for o in origins]
        exposed = ["ETag", "Content-Length", "Content-Range", "Location", "Accept-Ranges"]
        stack.append(Middleware(_json_cors(), allow_origins=allow, allow_methods=["*"], allow_headers=["*"],
                                expose_headers=exposed, max_age=600))
    return [*stack, *inner, Middleware(CrossSiteGuard, cors_origins=origins)]
