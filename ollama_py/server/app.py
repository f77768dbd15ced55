"""The aiohttp application: the route table, the middleware pipeline, startup and shutdown.

`make_app` builds everything in one place and the app is never changed after;
`serve` is what `ollama-py serve` runs. The route table is data, so the same
list registers the handlers, gives each its key scope and writes /openapi.json.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from pathlib import Path

from aiohttp import web

from ollama_py import __version__
from ollama_py.api import anthropic, native, openai, responses
from ollama_py.cluster import probe
from ollama_py.engine.backend import RunnerBackend
from ollama_py.engine.supervisor import ProcessBackend
from ollama_py.engine.front import Engine
from ollama_py.server import (
    openapi,
    routes_anthropic,
    routes_models,
    routes_native,
    routes_openai,
    routes_ops,
    routes_responses,
)
from ollama_py.server.metrics import Metrics
from ollama_py.server.middleware import (
    Cors,
    Scope,
    api_keys,
    errors,
    host_allowlist,
    load_keys,
    observe,
)
from ollama_py.server.openapi import Route
from ollama_py.server.services import SERVICES, Services, listing_executor
from ollama_py.settings import SECRETS, Settings, SettingsError
from ollama_py.store.manifests import Store

log = logging.getLogger(__name__)

DEFAULT_PORT = 11434


_NDJSON = "application/x-ndjson"
_SSE = "text/event-stream"
P, R, A = Scope.PUBLIC, Scope.READ, Scope.ADMIN

ROUTES: tuple[Route, ...] = (
    Route("GET", "/", routes_native.root, P, "Says the server is running"),
    Route("HEAD", "/", routes_native.root, P, "Says the server is running"),
    Route("GET", "/api/version", routes_native.version, P, "The Ollama API version served",
          response=native.VersionResponse),
    Route("HEAD", "/api/version", routes_native.version, P, "The Ollama API version served"),
    Route("POST", "/api/generate", routes_native.generate, R, "Completes a prompt",
          native.GenerateRequest, native.GenerateResponse, _NDJSON),
    Route("POST", "/api/chat", routes_native.chat, R, "Answers a conversation", native.ChatRequest,
          native.ChatResponse, _NDJSON),
    Route("POST", "/api/embed", routes_native.embed, R, "Embeds one or more inputs", native.EmbedRequest,
          native.EmbedResponse),
    Route("POST", "/api/embeddings", routes_native.embeddings, R, "Embeds one prompt (deprecated: use /api/embed)",
          native.EmbeddingRequest, native.EmbeddingResponse),
    Route("POST", "/api/tokenize", routes_native.tokenize, R, "A model's tokens for a text",
          native.TokenizeRequest, native.TokenizeResponse),
    Route("POST", "/api/detokenize", routes_native.detokenize, R, "The text of a model's tokens",
          native.DetokenizeRequest, native.DetokenizeResponse),
    Route("GET", "/api/tags", routes_models.tags, R, "Lists the models in the store", response=native.ListResponse),
    Route("HEAD", "/api/tags", routes_models.tags, R, "Lists the models in the store"),
    Route("POST", "/api/show", routes_models.show, R, "A model's Modelfile, parameters, template and metadata",
          native.ShowRequest, native.ShowResponse),
    Route("GET", "/api/ps", routes_models.ps, R, "Lists the loaded models", response=native.ProcessResponse),
    Route("POST", "/api/copy", routes_models.copy, A, "Copies a model under another name", native.CopyRequest),
    Route("DELETE", "/api/delete", routes_models.delete, A, "Removes a model", native.ModelRequest),
    Route("POST", "/api/create", routes_models.create_model, A, "Creates a model from a base model or GGUF blob",
          native.CreateRequest, native.ProgressResponse, _NDJSON),
    Route("HEAD", "/api/blobs/{digest}", routes_models.blob_exists, R, "Whether the store holds a blob"),
    Route("POST", "/api/blobs/{digest}", routes_models.upload_blob, A, "Uploads a blob (the raw bytes)"),
    Route("POST", "/api/pull", routes_models.pull, A, "Downloads a model from a registry", native.TransferRequest,
          native.ProgressResponse, _NDJSON),
    Route("POST", "/api/push", routes_models.push, A, "Uploads a model to a registry", native.TransferRequest,
          native.ProgressResponse, _NDJSON),
    Route("POST", "/v1/chat/completions", routes_openai.chat_completions, R, "OpenAI chat completions",
          openai.ChatCompletionRequest, openai.ChatCompletion, _SSE),
    Route("POST", "/v1/completions", routes_openai.completions, R, "OpenAI (legacy) completions",
          openai.CompletionRequest, openai.Completion, _SSE),
    Route("POST", "/v1/embeddings", routes_openai.embeddings, R, "OpenAI embeddings", openai.EmbeddingRequest,
          openai.EmbeddingList),
    Route("GET", "/v1/models", routes_openai.list_models, R, "OpenAI model list", response=openai.ModelList),
    Route("GET", "/v1/models/{model:.+}", routes_openai.get_model, R, "One model, OpenAI's way",
          response=openai.Model),
    Route("POST", "/v1/messages", routes_anthropic.messages, R, "Anthropic messages", anthropic.MessagesRequest,
          anthropic.MessageResponse, _SSE),
    Route("POST", "/v1/messages/count_tokens", routes_anthropic.count_tokens, R,
          "Anthropic token count of a conversation", anthropic.CountTokensRequest, anthropic.CountTokensResponse),
    Route("POST", "/v1/responses", routes_responses.create, R, "OpenAI responses", responses.ResponseRequest,
          responses.Response, _SSE),
    Route("GET", "/v1/responses/{response_id}", routes_responses.get, R, "A kept response, by id",
          response=responses.Response),
    Route("DELETE", "/v1/responses/{response_id}", routes_responses.delete, R, "Forgets a kept response",
          response=responses.Deleted),
    Route("GET", "/health", routes_ops.health, P, "Liveness, ollama-py's version and the loaded model count",
          response=native.HealthResponse),
    Route("GET", "/metrics", routes_ops.metrics, R, "Prometheus metrics"),
    Route("GET", "/openapi.json", routes_ops.openapi_json, P, "This description of the API"),
)


def runner_backend(settings: Settings) -> RunnerBackend:
    """Each model in a runner process of its own, or split across the RPC workers OLLAMA_RPC_SERVERS names
    (checked with a handshake before llama.cpp, which would abort or hang on a bad one)."""
    return ProcessBackend(settings, workers=settings.rpc_servers, check_workers=probe.check_all,
                          explain_death=probe.suspects)


def make_app(settings: Settings, *, store: Store | None = None,
             backend: RunnerBackend | None = None) -> web.Application:
    """The whole server, ready for an AppRunner or `web.run_app`; models run on `backend`, by default the one
    the settings call for."""
    engine = Engine(settings, backend or runner_backend(settings))
    metrics = Metrics(engine)
    svc = Services(settings=settings, store=store or Store.from_settings(settings), engine=engine, metrics=metrics,
                   listing=listing_executor(settings.listing_threads))
    cors = Cors(settings.origins)
    host, _ = bind_address(settings.host)
    scopes: dict[web.AbstractRoute, Scope] = {}
    app = web.Application(client_max_size=settings.max_body_size, middlewares=[
        observe(metrics),
        errors,
        host_allowlist(loopback_bind=is_loopback(host), extra=settings.allowed_hosts),
        cors.middleware,
        api_keys(keys=load_keys(settings), scopes=scopes),
    ])
    app[SERVICES] = svc
    app[routes_ops.OPENAPI] = openapi.document(ROUTES, version=__version__)
    for route in ROUTES:
        scopes[app.router.add_route(route.method, route.path, route.handler)] = route.scope
    app.on_response_prepare.append(cors.on_response_prepare)
    app.on_shutdown.append(_drain)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _drain(app: web.Application) -> None:
    """On SIGTERM, streams get most of the shutdown timeout to finish; then each ends with an error line at its
    next chunk, so clients see a stream that ended rather than a connection cut when the rest is cancelled."""
    svc = app[SERVICES]
    asyncio.get_running_loop().call_later(svc.settings.shutdown_timeout * 0.8, svc.draining.set)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """At startup, prune blobs no model uses (as Ollama does, unless OLLAMA_NOPRUNE); at exit, unload every model."""
    svc = app[SERVICES]
    removed = await asyncio.get_running_loop().run_in_executor(svc.listing, svc.store.prune)
    if removed:
        log.info("pruned %d unused blobs", len(removed))
    yield
    svc.listing.shutdown(wait=False, cancel_futures=True)
    await svc.engine.close()


def _child_pids() -> list[int]:
    """This process's children (runner processes, downloads), from /proc."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name may hold spaces and parentheses: the fields that follow start after the last ')'.
        if int(stat.rpartition(")")[2].split()[1]) == me:
            found.append(int(entry))
    return found


def _exit_now() -> None:
    """The end of a shutdown that ran out of time: children are killed, busy threads are left behind."""
    busy = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    log.warning("shutdown took longer than its bound; exiting with %d busy threads (%s)", len(busy),
                ", ".join(busy[:8]))
    for pid in _child_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    logging.shutdown()
    os._exit(0)


def _bound_shutdown(timeout: float) -> Callable[[web.Application], Awaitable[None]]:
    """Makes the process exit within twice `timeout` of a shutdown's start, whatever still runs.

    In-flight requests get `timeout` (aiohttp's shutdown_timeout), unloading the models as long again. A
    worker thread cannot be stopped, and Python joins the executors' threads at exit: one stuck thread
    would keep the process alive for ever.
    """
    async def arm(_: web.Application) -> None:
        timer = threading.Timer(2 * timeout, _exit_now)
        timer.daemon = True
        timer.start()

    return arm


def bind_address(raw: str) -> tuple[str, int]:
    """OLLAMA_HOST as Ollama reads it: `[scheme://]host[:port][/path]`, default 127.0.0.1:11434.

    An empty host (":11434") means every interface.
    """
    text = raw.strip()
    default_port = DEFAULT_PORT
    if "://" in text:
        scheme, text = text.split("://", 1)
        default_port = {"http": 80, "https": 443}.get(scheme.lower(), DEFAULT_PORT)
    text = text.split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not text:
        host = "127.0.0.1"
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise SettingsError(f"OLLAMA_HOST={raw!r}: the port must be a number") from None


def is_loopback(host: str) -> bool:
    """Whether an address to listen on is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _configure_logging(settings: Settings) -> None:
    """Our INFO lines (the access log) reach the root handlers, whatever level the CLI gave the root logger."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ollama_py").setLevel(logging.DEBUG if settings.debug else logging.INFO)
    # llama.cpp reports every load in dozens of lines; keep them for OLLAMA_DEBUG.
    logging.getLogger("ollama_py.llama").setLevel(logging.DEBUG if settings.debug else logging.WARNING)


def serve(settings: Settings) -> None:
    """Serves on settings.host until SIGINT or SIGTERM, then finishes in-flight requests and unloads models.

    Refuses to listen beyond loopback without API keys unless
    OLLAMA_PY_ALLOW_UNAUTHENTICATED says so: an open Ollama port lets anyone
    run, pull and delete models.
    """
    _configure_logging(settings)
    host, port = bind_address(settings.host)
    if not is_loopback(host) and not load_keys(settings) and not settings.allow_unauthenticated:
        raise SettingsError(
            f"refusing to listen on {host or 'every interface'}:{port} without API keys: set OLLAMA_PY_API_KEYS "
            "or OLLAMA_PY_API_KEYS_FILE, or OLLAMA_PY_ALLOW_UNAUTHENTICATED=1 to serve anyone who can reach it")
    for f in fields(settings):
        if f.name not in SECRETS:
            log.info("setting %s=%s", f.name, getattr(settings, f.name))
    app = make_app(settings)
    app.on_shutdown.append(_bound_shutdown(settings.shutdown_timeout))
    log.info("ollama-py %s listening on http://%s:%d", __version__, host or "0.0.0.0", port)
    web.run_app(app, host=host or None, port=port, access_log=None, print=None, handler_cancellation=True,
                shutdown_timeout=settings.shutdown_timeout)
