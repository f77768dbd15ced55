"""Ollama's generation routes: /api/generate, /api/chat, /api/embed, /api/embeddings, and our tokenizer routes.

Each handler decodes, resolves the model, and streams: NDJSON by default, one
object for `"stream": false` (the same stream folded). An empty prompt or
message list only loads the model, or unloads it with keep_alive 0.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any, TypedDict

import msgspec
import orjson
from aiohttp import web

from ollama_py.api import codec, native
from ollama_py.api.options import Options, think_setting
from ollama_py.engine.chat import ChatDelta, ChatDone, ChatRequest
from ollama_py.engine.types import Logprob
from ollama_py.llama.shim import ToolCall
from ollama_py.server import bounds, inference, models, streaming
from ollama_py.server.models import ResolvedModel
from ollama_py.server.services import record, services


def now() -> str:
    """RFC 3339 in UTC, as Go formats time.Time."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def native_logprob(lp: Logprob) -> native.Logprob:
    return native.Logprob(token=lp.token, logprob=lp.logprob, bytes=list(lp.bytes),
                          top_logprobs=[native.TokenLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes))
                                        for t in lp.top_logprobs] or None)


def tool_arguments(text: str) -> dict[str, Any]:
    """A call's arguments as an object; a model that wrote something else gets it under "arguments"."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"arguments": value}


def native_tool_calls(calls: tuple[ToolCall, ...]) -> list[native.ToolCall] | None:
    return [native.ToolCall(id=c.id, function=native.ToolCallFunction(index=i, name=c.name,
                                                                       arguments=tool_arguments(c.arguments)))
            for i, c in enumerate(calls)] or None


class _Counters(TypedDict):
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_cached_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


def _metrics(request: web.Request, event: ChatDone) -> _Counters:
    """The final chunk's counters; total_duration runs from the request's arrival, load included."""
    done, rec = event.done, record(request)
    return _Counters(total_duration=time.monotonic_ns() - rec.started, load_duration=rec.load_duration,
                     prompt_eval_count=done.prompt_tokens, prompt_eval_cached_count=done.prompt_cached,
                     prompt_eval_duration=done.prompt_eval_duration,
                     eval_count=done.eval_count, eval_duration=done.eval_duration)


async def _load_only(request: web.Request, model: ResolvedModel, options: Options | None,
                     keep_alive: float | None) -> str:
    """Loads the model and keeps it (done_reason "load"), or with keep_alive 0 unloads it ("unload")."""
    if keep_alive == 0:
        await services(request).engine.unload(model.key)
        return "unload"
    async with inference.hold(request, model, options, keep_alive):
        return "load"


async def _respond(request: web.Request, stream: bool, chunks: AsyncGenerator[Any, None],
                   fold: Callable[[list[Any]], Any]) -> web.StreamResponse:
    if stream:
        return await streaming.ndjson(request, chunks)
    return streaming.json(fold([chunk async for chunk in chunks]))


# ---- /api/generate ------------------------------------------------------------------


async def generate(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.GenerateRequest)
    model = await inference.resolve(request, req.model)
    keep_alive = models.keep_alive(req.keep_alive)
    if not req.prompt and not req.images:
        reason = await _load_only(request, model, req.options, keep_alive)
        return streaming.json(native.GenerateResponse(model=req.model, created_at=now(), response="", done=True,
                                                      done_reason=reason))
    return await _respond(request, req.stream, _generate_chunks(request, req, model, keep_alive), _fold_generate)


async def _generate_chunks(request: web.Request, req: native.GenerateRequest, model: ResolvedModel,
                           keep_alive: float | None) -> AsyncGenerator[native.GenerateResponse, None]:
    think, think_level = think_setting(req.think)
    chat = ChatRequest(id=inference.request_id("gen"), messages=(), format=req.format, think=think,
                       think_level=think_level, truncate=req.truncate, shift=req.shift, logprobs=req.logprobs,
                       top_logprobs=req.top_logprobs, template=req.template)
    prompt = inference.Prompt(text=req.prompt, system=req.system, images=tuple(req.images or ()), raw=req.raw,
                              suffix=req.suffix)
    await inference.admit(request, model, chat, prompt)
    async with inference.hold(request, model, req.options, keep_alive) as held:
        # `context` (deprecated, not sent in raw mode): the conversation so far as tokens, before the new prompt.
        job = inference.prompt_job(held, chat, prompt, context=tuple(req.context or ()), return_context=not req.raw)
        async for event in inference.answer(request, held, job):
            if isinstance(event, ChatDelta):
                yield native.GenerateResponse(
                    model=req.model, created_at=now(), response=event.content, thinking=event.thinking, done=False,
                    logprobs=[native_logprob(event.logprob)] if event.logprob else None)
                continue
            yield native.GenerateResponse(model=req.model, created_at=now(), response="", done=True,
                                          done_reason=str(event.done.reason),
                                          context=list(event.context) if not req.raw else None,
                                          **_metrics(request, event))


def _fold_generate(chunks: list[native.GenerateResponse]) -> native.GenerateResponse:
    logprobs = [lp for c in chunks for lp in c.logprobs or ()]
    return msgspec.structs.replace(chunks[-1], response="".join(c.response for c in chunks),
                                   thinking="".join(c.thinking for c in chunks), logprobs=logprobs or None)


# ---- /api/chat ----------------------------------------------------------------------


async def chat(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.ChatRequest)
    model = await inference.resolve(request, req.model)
    keep_alive = models.keep_alive(req.keep_alive)
    if not req.messages:
        reason = await _load_only(request, model, req.options, keep_alive)
        return streaming.json(native.ChatResponse(
            model=req.model, created_at=now(), message=native.ResponseMessage(role="assistant", content=""),
            done=True, done_reason=reason))
    return await _respond(request, req.stream, _chat_chunks(request, req, model, keep_alive), _fold_chat)


async def _chat_chunks(request: web.Request, req: native.ChatRequest, model: ResolvedModel,
                       keep_alive: float | None) -> AsyncGenerator[native.ChatResponse, None]:
    messages = [inference.message_dict(m) for m in req.messages or ()]
    think, think_level = think_setting(req.think)
    conversation = ChatRequest(id=inference.request_id("chat"), messages=inference.with_modelfile(model, messages),
                               tools=tuple(msgspec.to_builtins(t) for t in req.tools or ()), format=req.format,
                               think=think, think_level=think_level, truncate=req.truncate, shift=req.shift,
                               logprobs=req.logprobs, top_logprobs=req.top_logprobs)
    async for event in inference.converse(request, model, req.options, keep_alive, conversation):
        if isinstance(event, ChatDelta):
            yield native.ChatResponse(
                model=req.model, created_at=now(), done=False,
                message=native.ResponseMessage(role="assistant", content=event.content, thinking=event.thinking),
                logprobs=[native_logprob(event.logprob)] if event.logprob else None)
            continue
        yield native.ChatResponse(
            model=req.model, created_at=now(), done=True, done_reason=str(event.done.reason),
            message=native.ResponseMessage(role="assistant", content="",
                                           tool_calls=native_tool_calls(event.tool_calls)),
            **_metrics(request, event))


def _fold_chat(chunks: list[native.ChatResponse]) -> native.ChatResponse:
    last = chunks[-1]
    message = msgspec.structs.replace(last.message, content="".join(c.message.content for c in chunks),
                                      thinking="".join(c.message.thinking for c in chunks))
    logprobs = [lp for c in chunks for lp in c.logprobs or ()]
    return msgspec.structs.replace(last, message=message, logprobs=logprobs or None)


# ---- /api/embed, /api/embeddings ----------------------------------------------------


async def embed(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.EmbedRequest)
    model = await inference.resolve(request, req.model)
    inputs = ([req.input] if req.input else []) if isinstance(req.input, str) else req.input
    vectors, tokens = await inference.embed(request, model, inputs, options=req.options,
                                            keep_alive=models.keep_alive(req.keep_alive), truncate=req.truncate,
                                            dimensions=req.dimensions)
    rec = record(request)
    return streaming.json(native.EmbedResponse(
        model=req.model, embeddings=vectors, total_duration=time.monotonic_ns() - rec.started,
        load_duration=rec.load_duration, prompt_eval_count=tokens))


async def embeddings(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.EmbeddingRequest)
    model = await inference.resolve(request, req.model)
    vectors, _ = await inference.embed(request, model, [req.prompt] if req.prompt else [], options=req.options,
                                 keep_alive=models.keep_alive(req.keep_alive))
    return streaming.json(native.EmbeddingResponse(embedding=vectors[0] if vectors else []))


# ---- /api/tokenize, /api/detokenize (ollama-py's own) -------------------------------


async def tokenize(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.TokenizeRequest)
    bounds.text(services(request).settings, req.text)
    model = await inference.resolve(request, req.model)
    async with inference.hold(request, model, req.options, models.keep_alive(req.keep_alive)) as held:
        tokens = await held.runner.tokenize(req.text, add_special=req.add_special)
    return streaming.json(native.TokenizeResponse(model=req.model, tokens=tokens))


async def detokenize(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.DetokenizeRequest)
    model = await inference.resolve(request, req.model)
    async with inference.hold(request, model, req.options, models.keep_alive(req.keep_alive)) as held:
        n_vocab = held.runner.n_vocab
        bad = [t for t in req.tokens if not 0 <= t < n_vocab]
        if bad:
            raise codec.BadRequest(f"tokens: {bad[0]} is not a token of this model (0 to {n_vocab - 1})")
        text = await held.runner.detokenize(req.tokens)
    return streaming.json(native.DetokenizeResponse(model=req.model, text=text))


# ---- / and /api/version -------------------------------------------------------------


async def root(request: web.Request) -> web.StreamResponse:
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.StreamResponse:
    return streaming.json(native.VersionResponse(version=native.API_VERSION))
