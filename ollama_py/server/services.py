"""What a handler reaches: the app's long-lived services, and its own request's record.

The record is filled as the request goes (model, token counts, first-token
time) and read once at the end by the access log and the metrics.

The listing routes run their store reads on threads of their own: the
loop's default executor serves the generation side, where a request's work
can keep every thread busy, and `/api/tags` must answer meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from aiohttp import web

from ollama_py.engine.front import Engine
from ollama_py.server.metrics import Metrics
from ollama_py.server.response_store import ResponseStore
from ollama_py.settings import Settings
from ollama_py.store.manifests import Store


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    engine: Engine
    metrics: Metrics
    listing: ThreadPoolExecutor  # store reads of the listing routes, apart from the default executor
    # Set while shutting down once in-flight streams have had most of their time: each then ends cleanly.
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    @functools.cached_property
    def responses(self) -> ResponseStore:
        """Recent /v1/responses answers, for previous_response_id; made on first use, from the settings."""
        return ResponseStore.from_settings(self.settings)


SERVICES = web.AppKey("services", Services)

P = ParamSpec("P")
T = TypeVar("T")


def listing_executor(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="listing")


async def listing(request: web.Request, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs a blocking store read on the listing threads.

    A StopIteration escaping `fn` becomes a RuntimeError: an asyncio future cannot hold one, and the
    request would never be answered.
    """
    def run() -> T:
        try:
            return fn(*args, **kwargs)
        except StopIteration as exc:
            raise RuntimeError(f"{getattr(fn, '__name__', fn)} ran out of items") from exc

    return await asyncio.get_running_loop().run_in_executor(services(request).listing, run)


@dataclass
class RequestRecord:
    """One request, as the access log line and the metrics report it; durations in nanoseconds."""

    started: int = field(default_factory=time.monotonic_ns)
    model: str = ""
    prompt_tokens: int = 0
    eval_tokens: int = 0
    load_duration: int = 0
    first_token: int = 0  # monotonic time of the first generated text; 0 if none
    eval_duration: int = 0
    error: str = ""  # a failure after streaming began (the status was already 200)

    def token_seen(self) -> None:
        if not self.first_token:
            self.first_token = time.monotonic_ns()


RECORD = web.RequestKey("record", RequestRecord)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def record(request: web.Request) -> RequestRecord:
    """This request's record, made by the logging middleware."""
    return request[RECORD]
