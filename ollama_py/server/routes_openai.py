"""OpenAI's routes (/v1/*) over the same engine as the native ones.

Requests are translated into the engine's conversation and Ollama's options,
as Ollama's compatibility layer does (omitted temperature and top_p are 1.0,
OpenAI's defaults, and override the Modelfile's; a reasoning effort becomes a
`think` level; values Ollama ignores are ignored and logged once each). Streams are server-sent
events ending in `data: [DONE]`; errors have OpenAI's shape and a busy server
answers 429 so SDKs back off and retry (see errors.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypedDict

import msgspec
from aiohttp import web

from ollama_py.api import codec, openai
from ollama_py.api.options import Format, Options, Think, think_from_effort, think_setting
from ollama_py.engine.chat import ChatDelta, ChatDone, ChatEvent, ChatRequest
from ollama_py.engine.types import DoneReason, Logprob
from ollama_py.llama.shim import ToolCall
from ollama_py.server import images, inference, models, streaming, tool_choice
from ollama_py.server.errors import ApiError
from ollama_py.server.models import ResolvedModel
from ollama_py.server.services import services
from ollama_py.store.manifests import LocalModel


log = logging.getLogger(__name__)

_IGNORED_LOGGED = 256  # distinct ignored values worth a line each; a client inventing values gets no more
_ignored: set[tuple[str, str]] = set()


def _ignore(field: str, value: object) -> None:
    """Logs, once per value, a field value Ollama ignores and so do we."""
    key = (field, repr(value)[:100])
    if key not in _ignored and len(_ignored) < _IGNORED_LOGGED:
        _ignored.add(key)
        log.info("ignoring %s %s, as Ollama does", field, key[1])


class _Header(TypedDict):
    """What every object of one answer repeats: one id and one creation time for the whole stream."""

    id: str
    created: int
    model: str


def _options(req: openai.ChatCompletionRequest | openai.CompletionRequest, max_tokens: int | None) -> Options:
    if req.n is not None and req.n != 1:
        _ignore("n", req.n)
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    return Options(temperature=1.0 if req.temperature is None else req.temperature,
                   top_p=1.0 if req.top_p is None else req.top_p, frequency_penalty=req.frequency_penalty,
                   presence_penalty=req.presence_penalty, seed=req.seed, stop=stop, num_predict=max_tokens)


def _finish_reason(done: ChatDone) -> str:
    if done.tool_calls:
        return "tool_calls"
    return "length" if done.done.reason is DoneReason.LENGTH else "stop"


def _usage(done: ChatDone) -> openai.Usage:
    prompt, completion = done.done.prompt_tokens, done.done.eval_count
    return openai.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                        prompt_tokens_details=openai.PromptTokensDetails(cached_tokens=done.done.prompt_cached))


def _logprob(lp: Logprob) -> openai.TokenLogprob:
    return openai.TokenLogprob(token=lp.token, logprob=lp.logprob, bytes=list(lp.bytes), top_logprobs=[
        openai.TopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in lp.top_logprobs])


def _tool_calls(calls: tuple[ToolCall, ...], *, indexed: bool) -> list[openai.ToolCall] | None:
    return [openai.ToolCall(id=c.id, type="function", function=openai.FunctionCall(name=c.name, arguments=c.arguments),
                            index=i if indexed else None) for i, c in enumerate(calls)] or None


# ---- /v1/chat/completions -----------------------------------------------------------


def _image(part: openai.ImagePart) -> str:
    return images.from_data_url(part.image_url if isinstance(part.image_url, str) else part.image_url.url,
                                field="image_url")


_ROLES = {"developer": "system", "function": "tool"}  # OpenAI's newer and older names for what templates know


def _message(m: openai.ChatMessage) -> dict[str, Any]:
    """An OpenAI message as the chat templates take it (they are written against OpenAI's shape)."""
    role = _ROLES.get(m.role, m.role)
    out: dict[str, Any] = {"role": role}
    if isinstance(m.content, list):
        out["content"] = "\n".join(p.text for p in m.content if isinstance(p, openai.TextPart))
        media = [_image(p) if isinstance(p, openai.ImagePart) else p.input_audio.data
                 for p in m.content if not isinstance(p, openai.TextPart)]
        if media:
            out["images"] = media
    else:
        out["content"] = m.content or ""
    calls = [(c.id, c.function) for c in m.tool_calls or ()] or ([("", m.function_call)] if m.function_call else [])
    if calls:
        out["tool_calls"] = [{"type": "function", **({"id": id_} if id_ else {}),
                              "function": {"name": f.name, "arguments": f.arguments or "{}"}} for id_, f in calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name and role == "tool":
        out["name"] = m.name
    if m.reasoning_content or m.reasoning:
        out["reasoning_content"] = m.reasoning_content or m.reasoning
    return out


def _format(response_format: openai.ResponseFormat | None) -> Format | None:
    """Ollama's `format` for a response_format; as Ollama, the type's case and spaces do not matter, and any
    other type (or json_schema without a schema) is free text."""
    if response_format is None:
        return None
    kind = response_format.type.strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and response_format.json_schema is not None:
        return response_format.json_schema.schema
    if kind not in ("text", "json_schema"):
        _ignore("response_format.type", response_format.type)
    return None


def _tools(req: openai.ChatCompletionRequest) -> tuple[tuple[dict[str, Any], ...], str]:
    """The tools offered and OpenAI's tool_choice as the engine takes it ("auto", "required")."""
    tools = tuple(msgspec.to_builtins(t) for t in req.tools or ())
    choice = req.tool_choice
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            return tool_choice.choose(tools, "required", name)
    elif choice in (None, "auto", "none", "required"):
        return tool_choice.choose(tools, choice or "auto")  # type: ignore[arg-type]
    _ignore("tool_choice", choice)  # Ollama ignores tool_choice altogether: all tools stay offered
    return tool_choice.choose(tools, "auto")


def _think(req: openai.ChatCompletionRequest) -> Think | None:
    """The request's reasoning effort as Ollama's `think`; `reasoning.effort` wins over `reasoning_effort`."""
    field, effort = ("reasoning.effort", req.reasoning.effort) if req.reasoning is not None else (
        "reasoning_effort", req.reasoning_effort)
    try:
        return think_from_effort(effort)
    except ValueError as exc:
        raise codec.BadRequest(f"{field}: {exc}") from None


def _conversation(req: openai.ChatCompletionRequest, model: ResolvedModel) -> ChatRequest:
    tools, choice = _tools(req)
    think, think_level = think_setting(_think(req))
    return ChatRequest(id=inference.request_id("chatcmpl"),
                       messages=inference.with_modelfile(model, [_message(m) for m in req.messages]),
                       tools=tools, tool_choice=choice, format=_format(req.response_format), think=think,
                       think_level=think_level, logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), openai.ChatCompletionRequest)
    model = await inference.resolve(request, req.model)
    conversation = _conversation(req, model)
    options = _options(req, req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens)
    events = inference.converse(request, model, options, models.keep_alive(req.keep_alive), conversation)
    header = _Header(id=conversation.id, created=int(time.time()), model=req.model)
    if req.stream:
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        return await streaming.sse(request, _chat_chunks(events, header, include_usage))
    content: list[str] = []
    reasoning: list[str] = []
    logprobs: list[openai.TokenLogprob] = []
    async for event in events:
        if isinstance(event, ChatDelta):
            content.append(event.content)
            reasoning.append(event.thinking)
            if event.logprob is not None:
                logprobs.append(_logprob(event.logprob))
            continue
        message = openai.AssistantMessage(role="assistant", content="".join(content),
                                          reasoning="".join(reasoning) or None,
                                          tool_calls=_tool_calls(event.tool_calls, indexed=False))
        choice = openai.ChatChoice(message=message, finish_reason=_finish_reason(event),
                                   logprobs=openai.ChoiceLogprobs(content=logprobs) if req.logprobs else None)
        return streaming.json(openai.ChatCompletion(**header, choices=[choice], usage=_usage(event)))
    raise ApiError(500, "the model stopped without finishing its answer")


async def _chat_chunks(events: AsyncIterator[ChatEvent], header: _Header,
                       include_usage: bool) -> AsyncGenerator[openai.ChatCompletionChunk, None]:
    role: str | None = "assistant"  # sent with the first chunk only, as OpenAI does

    def chunk(delta: openai.Delta, finish: str | None = None,
              logprob: Logprob | None = None) -> openai.ChatCompletionChunk:
        nonlocal role
        delta = msgspec.structs.replace(delta, role=role)
        role = None
        logprobs = openai.ChoiceLogprobs(content=[_logprob(logprob)]) if logprob is not None else None
        return openai.ChatCompletionChunk(**header, choices=[openai.ChunkChoice(delta=delta, finish_reason=finish,
                                                                                logprobs=logprobs)])

    async for event in events:
        if isinstance(event, ChatDelta):
            yield chunk(openai.Delta(content=event.content if event.content or not event.thinking else None,
                                     reasoning=event.thinking or None), logprob=event.logprob)
            continue
        if event.tool_calls:
            yield chunk(openai.Delta(tool_calls=_tool_calls(event.tool_calls, indexed=True)))
        yield chunk(openai.Delta(), finish=_finish_reason(event))
        if include_usage:
            yield openai.ChatCompletionChunk(**header, choices=[], usage=_usage(event))


# ---- /v1/completions ----------------------------------------------------------------


def _completion_logprobs(items: list[Logprob], start: int) -> openai.CompletionLogprobs:
    offsets, at = [], start
    for lp in items:
        offsets.append(at)
        at += len(lp.token)
    return openai.CompletionLogprobs(tokens=[lp.token for lp in items], token_logprobs=[lp.logprob for lp in items],
                                     top_logprobs=[{t.token: t.logprob for t in lp.top_logprobs} for lp in items],
                                     text_offset=offsets)


async def completions(request: web.Request) -> web.StreamResponse:
    """OpenAI's legacy completions; like Ollama's, the prompt goes through the model's template."""
    req = codec.decode(await request.read(), openai.CompletionRequest)
    model = await inference.resolve(request, req.model)
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    conversation = ChatRequest(id=inference.request_id("cmpl"), messages=(), logprobs=req.logprobs is not None,
                               top_logprobs=req.logprobs or 0)
    events = inference.complete(request, model, _options(req, req.max_tokens), models.keep_alive(req.keep_alive),
                                conversation, inference.Prompt(text=prompt, suffix=req.suffix or ""))
    header = _Header(id=conversation.id, created=int(time.time()), model=req.model)
    echo = prompt if req.echo else ""
    if req.stream:
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        return await streaming.sse(request, _completion_chunks(events, header, echo, req.logprobs is not None,
                                                               include_usage))
    text: list[str] = [echo]
    logprobs: list[Logprob] = []
    async for event in events:
        if isinstance(event, ChatDelta):
            text.append(event.content)
            if event.logprob is not None:
                logprobs.append(event.logprob)
            continue
        choice = openai.CompletionChoice(
            text="".join(text), finish_reason=_finish_reason(event),
            logprobs=_completion_logprobs(logprobs, len(echo)) if req.logprobs is not None else None)
        return streaming.json(openai.Completion(**header, choices=[choice], usage=_usage(event)))
    raise ApiError(500, "the model stopped without finishing its answer")


async def _completion_chunks(events: AsyncIterator[ChatEvent], header: _Header, echo: str, logprobs: bool,
                             include_usage: bool) -> AsyncGenerator[openai.Completion, None]:
    offset = len(echo)
    pending = echo
    async for event in events:
        if isinstance(event, ChatDelta):
            lps = None
            if logprobs and event.logprob is not None:
                lps = _completion_logprobs([event.logprob], offset)
            offset += len(event.content)
            yield openai.Completion(**header, choices=[openai.CompletionChoice(
                text=pending + event.content, finish_reason=None, logprobs=lps)])
            pending = ""
            continue
        yield openai.Completion(**header, choices=[openai.CompletionChoice(text=pending,
                                                                           finish_reason=_finish_reason(event))])
        if include_usage:
            yield openai.Completion(**header, choices=[], usage=_usage(event))


# ---- /v1/embeddings -----------------------------------------------------------------


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), openai.EmbeddingRequest)
    model = await inference.resolve(request, req.model)
    inputs = [req.input] if isinstance(req.input, str) else req.input
    if not inputs:
        raise codec.BadRequest("input: give at least one input")
    vectors, tokens = await inference.embed(request, model, inputs, options=None, keep_alive=None,
                                      dimensions=req.dimensions)
    data = [openai.Embedding(embedding=_base64(v) if req.encoding_format == "base64" else v, index=i)
            for i, v in enumerate(vectors)]
    return streaming.json(openai.EmbeddingList(data=data, model=req.model, usage=openai.EmbeddingUsage(
        prompt_tokens=tokens, total_tokens=tokens)))


# ---- /v1/models ---------------------------------------------------------------------


def _model(m: LocalModel) -> openai.Model:
    return openai.Model(id=m.name.display(), created=int(m.modified_at.timestamp()), owned_by=m.name.namespace)


async def list_models(request: web.Request) -> web.StreamResponse:
    stored = await asyncio.to_thread(services(request).store.models)
    return streaming.json(openai.ModelList(data=[_model(m) for m in stored]))


async def get_model(request: web.Request) -> web.StreamResponse:
    name = models.parse_name(request.match_info["model"])
    stored = await asyncio.to_thread(services(request).store.models)
    found = next((m for m in stored if m.name.same(name)), None)
    if found is None:
        raise ApiError(404, f"model '{name.display()}' not found")
    return streaming.json(_model(found))
