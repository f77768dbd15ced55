"""Streaming responses: NDJSON for /api, server-sent events for /v1, and progress from worker threads.

Server-sent events come in two kinds: OpenAI's chat streams (`data:` lines
ending in `data: [DONE]`) and the named events of Anthropic's Messages and
OpenAI's Responses streams (`event: NAME` before each `data:`, no trailer).

The status line can only be sent once. So a stream's first item is awaited
before anything is written: an error up to then (unknown model, bad option,
prompt too long, busy) still gets its own status from the error middleware.
After that the status is 200 and a failure becomes the stream's last item.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from ollama_py.api import codec
from ollama_py.server.errors import ApiError, classify, openai_error_body
from ollama_py.server.services import record, services
from ollama_py.store.create import ProgressUpdate

log = logging.getLogger(__name__)

T = TypeVar("T")

NDJSON = "application/x-ndjson"
_SSE_DONE = b"data: [DONE]\n\n"


def _sse(item: Any) -> bytes:
    return b"data: " + codec.encode(item) + b"\n\n"


async def _stream(request: web.Request, items: AsyncGenerator[Any, None], *, content_type: str,
                  frame: Callable[[Any], bytes], failure: Callable[[ApiError], bytes],
                  trailer: bytes) -> web.StreamResponse:
    async with aclosing(items) as it:
        first = await anext(it, None)
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            if first is not None:
                await response.write(frame(first))
            draining = services(request).draining
            async for item in it:
                if draining.is_set():
                    raise ApiError(503, "the server is shutting down")
                await response.write(frame(item))
        except (ConnectionResetError, asyncio.CancelledError):
            raise  # the client went away: closing `items` cancels the work
        except Exception as exc:  # noqa: BLE001 - the status is sent: any failure goes in the stream
            error = classify(exc)
            record(request).error = error.message
            log.warning("%s %s failed while streaming: %s", request.method, request.path, error.message)
            await response.write(failure(error))
        await response.write(trailer)
        await response.write_eof()
        return response


async def ndjson(request: web.Request, items: AsyncGenerator[Any, None]) -> web.StreamResponse:
    """One JSON object per line, each flushed as it comes; a failure is a last `{"error": ...}` line."""
    return await _stream(request, items, content_type=NDJSON, frame=codec.encode_line,
                         failure=lambda e: codec.encode_line({"error": e.message}), trailer=b"")


async def sse(request: web.Request, items: AsyncGenerator[Any, None]) -> web.StreamResponse:
    """`data: <json>` events ending with `data: [DONE]`, as OpenAI streams; a failure is an error event."""
    return await _stream(request, items, content_type="text/event-stream", frame=_sse,
                         failure=lambda e: _sse(openai_error_body(e)), trailer=_SSE_DONE)


def _named(event: msgspec.Struct) -> bytes:
    """One named event: the event's type tag is its name, as Anthropic and OpenAI's Responses send them."""
    return b"event: " + str(event.__struct_config__.tag).encode() + b"\ndata: " + codec.encode(event) + b"\n\n"


async def named_sse(request: web.Request, items: AsyncGenerator[msgspec.Struct, None],
                    failure: Callable[[ApiError], msgspec.Struct]) -> web.StreamResponse:
    """Events each named for its tagged Struct's tag; a failure is the event `failure` makes of it."""
    return await _stream(request, items, content_type="text/event-stream", frame=_named,
                         failure=lambda e: _named(failure(e)), trailer=b"")


def json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=codec.encode(value), content_type="application/json")


async def last(items: AsyncGenerator[T, None]) -> T:
    """The final item of a stream (for `"stream": false` on progress routes)."""
    final: T | None = None
    async with aclosing(items) as it:
        async for item in it:
            final = item
    if final is None:
        raise RuntimeError("the operation reported nothing")
    return final


async def progress_from_thread(work: Callable[[Callable[[ProgressUpdate], None], threading.Event], Any]
                               ) -> AsyncGenerator[ProgressUpdate, None]:
    """Runs blocking `work(progress, cancel)` in a thread and yields its progress as it reports it.

    `work` raises to fail. If the consumer stops early (the client went away),
    `cancel` is set; work that can stop midway checks it.
    """
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue[ProgressUpdate | None] = asyncio.Queue()
    cancel = threading.Event()

    def report(update: ProgressUpdate) -> None:
        loop.call_soon_threadsafe(updates.put_nowait, update)

    def run() -> Any:
        try:
            return work(report, cancel)
        finally:
            loop.call_soon_threadsafe(updates.put_nowait, None)

    task = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        while (update := await updates.get()) is not None:
            yield update
        await task  # raises what the work raised
    finally:
        if not task.done():
            cancel.set()
            # Nobody awaits it now; collect its outcome so a late failure is logged, not warned about.
            task.add_done_callback(_log_abandoned)


def _log_abandoned(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("abandoned operation ended with: %s", task.exception())
