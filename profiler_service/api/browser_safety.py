"""What a page of another site can make a browser send to this service, and what the service refuses.

A profiler on 127.0.0.1 without a token answers every page the user's browser opens:

- A page of another site can send a "simple" request (GET, or a POST with a form or text content type and no
  custom header) without the CORS preflight that asks the service first. It cannot read the answer, but the POST
  acts: ``fetch(".../v1/jobs/1/cancel", {method: "POST", mode: "no-cors"})`` would cancel a job. So every request
  that is not GET, HEAD or OPTIONS needs ``Content-Type: application/json`` or an ``Authorization`` header (either
  makes the browser send a preflight, which this service never approves), else 415 ``json_required``
  (:func:`json_or_authorization`); and an ``Origin`` header, when the request has one, must be the service's own
  origin (the scheme and the Host the request was sent to) or one of ``allowed_origins``, else 403
  ``origin_refused``.
- A DNS-rebinding page (a name of its own that resolves to 127.0.0.1 after the page has loaded) is same-origin with
  the service, so the browser lets it read every answer and send any request. Its requests carry its own name as
  ``Host``: a request whose Host is not one of the service's names (:class:`HostPolicy`) is refused, 400
  ``host_not_allowed``.
- Every answer carries ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and a Content-Security-Policy
  with ``frame-ancestors 'none'`` (:data:`CONTENT_SECURITY_POLICY` unless the route set its own, as ``/docs``
  does); a redirect's ``Location`` is a path on this service, never built from the request's Host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

from fastapi import Request
from fastapi.dependencies.models import Dependant
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from profiler_service.api.deps import require_token
from profiler_service.api.errors import ApiError
from profiler_service.settings import ProfilerSettings

#: Host names every service answers to (any port): a loopback service is reached by these.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: Bind addresses that name no host (every interface): they add nothing to the allowed Host names.
WILDCARD_BINDS = ("0.0.0.0", "::", "")
#: Methods that change nothing: neither the content-type rule nor the Origin check applies to them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: This origin's scripts, styles, images and API only: no inline script, no other host, no framing.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'none'")
#: The headers every answer carries (a route's own value of one of them is kept).
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
)
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
#: A Host header: a name or an IPv4 address, or an IPv6 address in brackets, then an optional port.
HOST_HEADER = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?$")


def split_host(value: str) -> tuple[str, int | None] | None:
    """``("127.0.0.1", 8000)`` of the Host header ``127.0.0.1:8000`` (``("::1", None)`` of ``[::1]``), the name in
    lower case; None when ``value`` is not a host with an optional port."""
    if not HOST_HEADER.match(value):
        return None
    try:
        parts = urlsplit("//" + value)
        return (parts.hostname or "").rstrip("."), parts.port
    except ValueError:  # a port above 65535
        return None


def normalize_origin(value: str) -> tuple[str, str, int] | None:
    """``("https", "example.org", 443)`` of the origin ``https://example.org`` (the port made explicit); None for
    ``null`` or anything that is not ``scheme://host[:port]``."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    return scheme, parts.hostname.rstrip("."), port if port is not None else DEFAULT_PORTS[scheme]


class HostPolicy:
    """The Host names a service answers to: :data:`LOOPBACK_NAMES`, its bind address when that names one host,
    and ``allowed_hosts`` (``*`` any; ``*.example.org`` the subdomains of example.org)."""

    def __init__(self, bind_host: str, allowed: Iterable[str]) -> None:
        names = set(LOOPBACK_NAMES)
        bind = bind_host.strip().strip("[]").lower()
        if bind not in WILDCARD_BINDS:
            names.add(bind)
        self.any = False
        self.suffixes: list[str] = []
        for name in allowed:
            if name == "*":
                self.any = True
            elif name.startswith("*."):
                self.suffixes.append(name[1:])  # ".example.org"
            else:
                parsed = split_host(name)  # "cpu-box:8000" names cpu-box: every name is allowed on any port
                names.add(parsed[0] if parsed is not None else name)
        self.names = frozenset(names)

    @classmethod
    def of(cls, settings: ProfilerSettings) -> HostPolicy:
        return cls(settings.host, settings.allowed_host_names())

    def allows(self, hostname: str) -> bool:
        return self.any or hostname in self.names or any(hostname.endswith(s) for s in self.suffixes)


def _is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class BrowserGuard:
    """Refuses, before anything reads the request, a foreign Host (400) and a foreign Origin on a request that
    changes something (403); see the module docstring. The content-type rule is :func:`json_or_authorization`'s: it
    needs the route."""

    def __init__(self, app: ASGIApp, settings: ProfilerSettings) -> None:
        self.app = app
        self.hosts = HostPolicy.of(settings)
        # ProfilerSettings has checked that each is an origin
        self.origins = frozenset(filter(None, map(normalize_origin, settings.allowed_origin_list())))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await _send_error(send, *refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """``(status, code, detail)`` of a request this service refuses, or None."""
        headers = {name: value.decode("latin-1") for name, value in scope.get("headers", [])}
        host_header = headers.get(b"host")
        host = None
        if host_header is not None:  # a browser always sends Host; a client that sends none is no web page
            host = split_host(host_header.strip())
            if host is None or not self.hosts.allows(host[0]):
                shown = host[0] if host is not None else host_header
                return (400, "host_not_allowed",
                        f"Host {shown!r} is not a name of this service (a DNS-rebinding page would send such a "
                        "Host); if clients reach the service by that name, add it to allowed_hosts "
                        "(serve --allowed-hosts or PROFILER_ALLOWED_HOSTS)")
        if scope["method"] in SAFE_METHODS:
            return None
        origin = headers.get(b"origin")
        if origin is not None and not self._origin_allowed(origin, scope["scheme"], host):
            return (403, "origin_refused",
                    f"a {scope['method']} from the page of origin {origin!r} is refused: only this service's own "
                    "pages, and the origins of allowed_origins (PROFILER_ALLOWED_ORIGINS), may send one")
        return None

    def _origin_allowed(self, origin: str, scheme: str, host: tuple[str, int | None] | None) -> bool:
        normalized = normalize_origin(origin.strip())
        if normalized is None:
            return False  # "null" (a sandboxed frame, a file) or garbage: never this service
        if normalized in self.origins:
            return True
        if host is None:
            return False
        own = (scheme, host[0], host[1] if host[1] is not None else DEFAULT_PORTS.get(scheme, 80))
        return normalized == own


def json_or_authorization(settings: ProfilerSettings) -> Callable[[Request], None]:
    """The app-wide dependency that refuses, 415 ``json_required``, a request other than GET, HEAD and OPTIONS with
    neither ``Content-Type: application/json`` nor an ``Authorization`` header: a page of another site can send one
    without a preflight. On a service with a token, a route that checks the token (``TokenDep``) answers such a
    request 401 instead, as it answers every request without the token (the 401 says what is missing)."""
    has_token = settings.token_value() is not None

    def require_json_or_authorization(request: Request) -> None:
        if (request.method in SAFE_METHODS or "authorization" in request.headers
                or _is_json(request.headers.get("content-type", ""))):
            return
        route = request.scope.get("route")
        if has_token and route is not None and _uses(getattr(route, "dependant", None), require_token):
            return  # require_token answers 401: no page of another site has the token either
        raise ApiError(415, "json_required",
                       f"{request.method} {request.url.path} needs 'Content-Type: application/json' (or an "
                       "'Authorization' header): a page of another site can send neither without asking the service "
                       "first")

    return require_json_or_authorization


def _uses(dependant: Dependant | None, call: object) -> bool:
    """Whether ``call`` is among the dependencies of ``dependant``, at any depth."""
    return dependant is not None and any(dep.call is call or _uses(dep, call) for dep in dependant.dependencies)


async def _send_error(send: Send, status: int, code: str, detail: str) -> None:
    body = json.dumps({"detail": detail, "code": code}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def relative_location(location: str) -> str:
    """The path (with query and fragment) of a redirect target: ``http://any-host/web/`` -> ``/web/``; a path that
    a browser would read as another host (``//evil.example``, ``/\\evil.example``) starts with one ``/``."""
    parts = urlsplit(location)
    if not parts.scheme and not parts.netloc and not location.startswith(("//", "/\\")):
        return location
    path = "/" + (parts.path or "/").lstrip("/\\")
    return urlunsplit(("", "", path, parts.query, parts.fragment))


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every answer (keeping a route's own value of one) and makes a
    ``Location`` header a path (Starlette builds the redirect of ``/web`` to ``/web/`` from the Host header)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = []
                for name, value in message.get("headers", []):
                    if name.lower() == b"location":
                        value = relative_location(value.decode("latin-1")).encode("latin-1")
                    headers.append((name, value))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
