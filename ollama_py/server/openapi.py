"""/openapi.json, written from the route table and the api Structs: the description cannot drift from the code."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp.typedefs import Handler

from ollama_py.api import anthropic, native, openai
from ollama_py.server.middleware import Scope

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Route:
    """One route: how it is served, who may call it, and what it reads and writes (for /openapi.json)."""

    method: str
    path: str
    handler: Handler
    scope: Scope
    summary: str
    body: type | None = None
    response: type | None = None
    stream: str = ""  # the content type of a streamed response ("" when not streamed)


def _content(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {kind: {"schema": schema}}


def document(routes: Iterable[Route], *, version: str) -> dict[str, Any]:
    routes = list(routes)
    types = {t for r in routes for t in (r.body, r.response) if t is not None}
    types |= {native.ErrorResponse, openai.ErrorResponse, anthropic.ErrorResponse}
    ordered = sorted(types, key=lambda t: (t.__module__, t.__qualname__))
    refs, components = msgspec.json.schema_components(ordered, ref_template=_REF)
    schema = dict(zip(ordered, refs))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = _PARAM.sub(r"{\1}", route.path)
        error = schema[_error_type(path)]
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": _operation_id(route.method, path),
            "responses": {
                "200": _ok(route, schema),
                "400": {"description": "Bad request: the message names the field", "content": _content(
                    "application/json", error)},
                "404": {"description": "Model not found", "content": _content("application/json", error)},
                "500": {"description": "Server error", "content": _content("application/json", error)},
            },
        }
        if route.scope is not Scope.PUBLIC:
            operation["security"] = [{"bearer": []}, {"apiKey": []}]  # either one
            operation["responses"]["401"] = {"description": "Missing or invalid API key (when keys are configured)",
                                             "content": _content("application/json", error)}
        params = _PARAM.findall(route.path)
        if params:
            operation["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                       for p in params]
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": _content("application/json", schema[route.body])}
        elif route.method == "POST":
            operation["requestBody"] = {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ollama-py", "version": version,
                 "description": "Ollama's API (/api), OpenAI's (/v1), and ollama-py's own routes."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    }


def _error_type(path: str) -> type:
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return anthropic.ErrorResponse
    return openai.ErrorResponse if path.startswith("/v1/") else native.ErrorResponse


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method.lower()}_{words}"


def _ok(route: Route, schema: dict[type, dict[str, Any]]) -> dict[str, Any]:
    if route.response is None:
        return {"description": "OK"}
    ok: dict[str, Any] = {"description": "OK", "content": _content("application/json", schema[route.response])}
    if route.stream:
        # Streamed unless the request says `"stream": false`: each line or event is one of these objects.
        ok["content"].update(_content(route.stream, schema[route.response]))
    return ok
