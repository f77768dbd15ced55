"""Operations routes beyond Ollama's: Prometheus metrics and the API's own description."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ollama_py import __version__
from ollama_py.api import codec, native
from ollama_py.server import metrics as metrics_module
from ollama_py.server import streaming
from ollama_py.server.services import services

OPENAPI = web.AppKey("openapi", dict[str, Any])


async def metrics(request: web.Request) -> web.StreamResponse:
    body = services(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": metrics_module.CONTENT_TYPE})


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.Response(body=codec.encode(request.app[OPENAPI]), content_type="application/json")


async def health(request: web.Request) -> web.StreamResponse:
    return streaming.json(native.HealthResponse(status="ok", version=__version__,
                                                loaded_models=len(services(request).engine.loaded())))
