"""The request pipeline around every handler, outermost first:

access log and metrics -> errors as JSON -> Host allowlist -> CORS -> API keys.

Each is a plain function from a factory whose options are checked once
(aiohttp's own middleware style). Security is on by default: a Host that is
not this machine is refused while we listen on loopback (DNS rebinding), a
browser origin not allowed gets a 403 and no CORS headers, and when keys are
configured every route but the public few needs one.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ollama_py.server.errors import CLIENT_CLOSED, ApiError, classify, render
from ollama_py.server.metrics import Metrics
from ollama_py.server.services import RECORD, RequestRecord
from ollama_py.settings import Settings, SettingsError

log = logging.getLogger(__name__)
access = logging.getLogger("ollama_py.access")


class Scope(enum.Enum):
    """What a key must allow for a route: nothing (public), inference and listing (read), or managing models."""

    PUBLIC = "public"
    READ = "read"
    ADMIN = "admin"


def _route_label(request: web.Request) -> str:
    """The route's pattern, not the raw path: a scanner's random paths must not become metric labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe(metrics: Metrics) -> Middleware:
    """One access-log line per request (model, status, tokens, durations) and the request metrics."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rec = request[RECORD] = RequestRecord()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            status = CLIENT_CLOSED
            raise
        finally:
            _log(request, rec, status)
            route = _route_label(request)
            metrics.requests.labels(route, request.method, str(status)).inc()
            metrics.latency.labels(route).observe((time.monotonic_ns() - rec.started) / 1e9)
            if rec.model and (rec.prompt_tokens or rec.eval_tokens):
                metrics.prompt_tokens.labels(rec.model).inc(rec.prompt_tokens)
                metrics.generated(rec.model, rec.eval_tokens, rec.eval_duration / 1e9)
                if rec.first_token:
                    metrics.ttft.labels(rec.model).observe((rec.first_token - rec.started) / 1e9)
                if rec.eval_tokens > 1:
                    metrics.tpot.labels(rec.model).observe(rec.eval_duration / (rec.eval_tokens - 1) / 1e9)

    return middleware


def _log(request: web.Request, rec: RequestRecord, status: int) -> None:
    total = (time.monotonic_ns() - rec.started) / 1e9
    parts = [f"{request.remote} {request.method} {request.path} {status} {total:.3f}s"]
    if rec.model:
        parts.append(f"model={rec.model}")
    if rec.prompt_tokens or rec.eval_tokens:
        parts.append(f"prompt_tokens={rec.prompt_tokens} eval_tokens={rec.eval_tokens}")
    if rec.load_duration:
        parts.append(f"load={rec.load_duration / 1e9:.3f}s")
    if rec.first_token:
        parts.append(f"ttft={(rec.first_token - rec.started) / 1e9:.3f}s")
    if rec.error:
        parts.append(f"error={rec.error!r}")
    access.info(" ".join(parts))


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON body with its status, in the shape of the route's API."""
    try:
        return await handler(request)
    except ConnectionResetError:
        raise  # the client is gone; there is nobody to answer
    except Exception as exc:  # noqa: BLE001 - every failure gets an answer
        error = classify(exc)
        if error.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, error.message)
        return render(request, error)


def _local_name(name: str) -> bool:
    """Ollama's allowed Hosts: localhost and local-only names, and addresses that cannot be a public site."""
    if name in ("localhost", socket.gethostname().lower()) or name.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def host_allowlist(*, loopback_bind: bool, extra: Iterable[str]) -> Middleware:
    """Refuses requests naming another Host (DNS rebinding: a web page's name pointed at 127.0.0.1).

    As in Ollama, enforced while listening on loopback; on other addresses only
    when OLLAMA_PY_ALLOWED_HOSTS names the hosts to accept.
    """
    allowed = frozenset(h.lower() for h in extra)
    enforce = loopback_bind or bool(allowed)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if enforce and "Host" in request.headers:
            try:
                name = (request.url.host or "").lower()
            except ValueError:
                name = ""
            if name not in allowed and not _local_name(name):
                raise ApiError(403, f"host {request.headers['Host'][:100]!r} is not allowed")
        return await handler(request)

    return middleware


# Ollama's built-in origins: the local machine on any port, and desktop-app schemes.
DEFAULT_ORIGINS = tuple(f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
                         for scheme in ("http", "https") for port in ("", ":*")) + (
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
# What a `*` may stand for: in a port, digits; in a host, characters that cannot end the host or start a port,
# a path or user info. So `http://localhost:*` is never `http://localhost:1234.evil.example`.
_PORT_WILDCARD = "[0-9]+"
_HOST_WILDCARD = r"[^/:@?#\s\[\]]*"


def origin_pattern(pattern: str) -> re.Pattern[str]:
    """An OLLAMA_ORIGINS entry as a regular expression matched against a whole Origin header.

    `*` alone allows every origin, as in Ollama; otherwise a `*` stands for part of the host, or for the
    port (digits only), never for both.
    """
    text = pattern.strip().lower()
    if text == "*":
        return re.compile(r".*", re.DOTALL)
    scheme, sep, authority = text.rpartition("://")
    if authority.startswith("["):  # an IPv6 address: the port comes after the bracket
        host, _, rest = authority.partition("]")
        host, port = host + "]", rest[1:] if rest.startswith(":") else None
    else:
        host, colon, port_text = authority.partition(":")
        port = port_text if colon else None
    regex = (re.escape(scheme) + re.escape(sep) + _HOST_WILDCARD.join(re.escape(part) for part in host.split("*")))
    if port is not None:
        regex += ":" + _PORT_WILDCARD.join(re.escape(part) for part in port.split("*"))
    return re.compile(regex)


class Cors:
    """Browser access: Ollama's built-in origins plus OLLAMA_ORIGINS (`*` wildcards), nobody else.

    The middleware answers preflights and refuses other origins with a 403 (as
    Ollama's gin-cors does); `on_response_prepare` puts the headers on every
    response to an allowed origin, streams and errors included.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        self.patterns = tuple(origin_pattern(p) for p in (*DEFAULT_ORIGINS, *origins))

    def allowed(self, origin: str) -> bool:
        return any(p.fullmatch(origin.lower()) for p in self.patterns)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        if not self.allowed(origin):
            raise ApiError(403, f"origin {origin[:100]!r} is not allowed; add it to OLLAMA_ORIGINS")
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": _METHODS,
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
                "Access-Control-Max-Age": "600"})
        return await handler(request)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and self.allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_keys(settings: Settings) -> dict[bytes, Scope]:
    """API keys from OLLAMA_PY_API_KEYS (`KEY` or `KEY:read`) and the keys file (`KEY` or `KEY read`).

    Stored as hashes: the comparison is constant-time and no key sits in memory as text.
    """
    entries: list[tuple[str, str]] = []
    for item in settings.api_keys:
        key, sep, scope = item.rpartition(":")
        entries.append((key, scope) if sep and scope in ("read", "admin") else (item, "admin"))
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise SettingsError(f"OLLAMA_PY_API_KEYS_FILE={path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2 or (len(words) == 2 and words[1] not in ("read", "admin")):
                raise SettingsError(f"{path} line {number}: expected 'KEY' or 'KEY read|admin'")
            entries.append((words[0], words[1] if len(words) == 2 else "admin"))
    return {_digest(key): Scope(scope) for key, scope in entries if key}


def _presented_key(request: web.Request) -> str:
    """The key a request presents: `Authorization: Bearer KEY`, or `x-api-key: KEY` as Anthropic's clients
    send it."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


def api_keys(*, keys: Mapping[bytes, Scope], scopes: Mapping[web.AbstractRoute, Scope]) -> Middleware:
    """Checks the key (`Authorization: Bearer KEY` or `x-api-key`) when keys are configured; admin routes need an
    admin key."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = scopes.get(request.match_info.route, Scope.READ)
        if not keys or needed is Scope.PUBLIC or request.method == "OPTIONS":
            return await handler(request)
        token = _presented_key(request)
        granted = None
        if token:
            presented = _digest(token)
            for digest, scope in keys.items():
                if hmac.compare_digest(digest, presented):
                    granted = scope
        if granted is None:
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY' or 'x-api-key: KEY')",
                           headers={"WWW-Authenticate": "Bearer"})
        if needed is Scope.ADMIN and granted is not Scope.ADMIN:
            raise ApiError(403, "this API key may not manage models (it has read scope)")
        return await handler(request)

    return middleware
