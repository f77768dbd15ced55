"""Generation for one request: resolve the model, hold it loaded, hand its runner the job, stream the answer.

The native and the OpenAI handlers both come through here; they differ only in
the shapes they read and write. The server only decides: the prompt is
rendered, tokenized, generated and parsed in the model's runner process.
Everything that can refuse the request (unknown model, missing capability,
bad option, a bound passed, prompt too long) happens before the first event,
so the streaming layer can still answer it with a status.

The store reads a request makes run on a few threads of their own, so that
however many generation requests arrive, they cannot take the threads that
other routes use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import orjson
from aiohttp import web

from ollama_py.api import native
from ollama_py.api.options import Options
from ollama_py.engine.backend import ModelRunner
from ollama_py.engine.chat import ChatDelta, ChatDone, ChatEvent, ChatRequest
from ollama_py.engine.scheduler import Lease
from ollama_py.engine.types import EngineError, Sampling
from ollama_py.engine.wire import ChatJob, Completion
from ollama_py.server import bounds, images, models
from ollama_py.server.models import ResolvedModel
from ollama_py.server.services import record, services

T = TypeVar("T")

# Generation's blocking work (store reads): a bounded pool of its own, apart from the default executor.
_STORE_READS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="generation store")


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on generation's own threads. Cancelled, the caller stops waiting; the read is short."""
    return await asyncio.get_running_loop().run_in_executor(_STORE_READS, functools.partial(fn, *args))


def request_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


async def resolve(request: web.Request, name: str) -> ResolvedModel:
    """The request's model from the store; the default model is imported on its first use."""
    svc = services(request)
    model = await blocking(models.resolve, svc.store, svc.settings, name)
    record(request).model = model.name.display()
    return model


@dataclass(frozen=True)
class Held:
    """A model held loaded for one request, and how that request samples."""

    model: ResolvedModel
    lease: Lease
    sampling: Sampling

    @property
    def runner(self) -> ModelRunner:
        return self.lease.loaded.runner


@asynccontextmanager
async def hold(request: web.Request, model: ResolvedModel, options: Options | None,
               keep_alive: float | None) -> AsyncIterator[Held]:
    """Loads the model if needed (Busy when too many wait) and keeps it for the body of the `async with`."""
    svc = services(request)
    plan = models.plan(svc.settings, model, options)
    bounds.stops(svc.settings, plan.sampling.stop)
    async with AsyncExitStack() as stack:
        try:
            lease = await stack.enter_async_context(svc.engine.acquire(model.key, plan.spec, keep_alive))
        except EngineError as exc:
            # The blob's file name means nothing to the user: say which model failed.
            raise type(exc)(f"unable to load model {model.asked}: "
                            f"{str(exc).replace(str(model.path), model.asked)}") from exc
        record(request).load_duration = lease.load_duration
        yield Held(model=model, lease=lease, sampling=plan.sampling)


def message_dict(message: native.Message) -> dict[str, Any]:
    """A native message as the chat templates take it (OpenAI's shape)."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.thinking:
        out["reasoning_content"] = message.thinking
    if message.images:
        out["images"] = message.images
    if message.tool_calls:
        out["tool_calls"] = [
            {"type": "function", **({"id": c.id} if c.id else {}),
             "function": {"name": c.function.name, "arguments": orjson.dumps(c.function.arguments).decode()}}
            for c in message.tool_calls]
    if message.tool_name:
        out["name"] = message.tool_name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def with_modelfile(model: ResolvedModel, messages: list[dict[str, Any]], *,
                   examples: bool = True) -> tuple[dict[str, Any], ...]:
    """The conversation with the Modelfile's MESSAGEs before it (unless `examples` is false), and its SYSTEM
    first unless it has one."""
    turns = [{"role": m.role, "content": m.content} for m in model.messages] if examples else []
    turns += messages
    if model.system and not (messages and messages[0]["role"] == "system"):
        turns.insert(0, {"role": "system", "content": model.system})
    return tuple(turns)


async def answer(request: web.Request, held: Held, job: ChatJob) -> AsyncGenerator[ChatEvent, None]:
    """Streams the model's answer to the job (rendered, generated and parsed in its runner process).

    Fills the request's record for the access log and the metrics as it goes.
    """
    rec = record(request)
    hide_thinking = job.chat.think is False
    async with aclosing(held.runner.chat(job)) as events:  # type: ignore[type-var]
        async for event in events:
            if hide_thinking:  # asked not to think, a model that reasons anyway keeps its reasoning to itself
                if isinstance(event, ChatDelta):
                    if not event.content and event.logprob is None:
                        continue
                    event = dataclasses.replace(event, thinking="")
                else:
                    event = dataclasses.replace(event, thinking="")
            if isinstance(event, ChatDelta) and (event.content or event.thinking):
                rec.token_seen()
            elif isinstance(event, ChatDone):
                rec.prompt_tokens = event.done.prompt_tokens
                rec.eval_tokens = event.done.eval_count
                rec.eval_duration = event.done.eval_duration
            yield event


def _for_model(held: Held, chat_request: ChatRequest) -> ChatRequest:
    """The request as this model answers it: its sampling, and its TEMPLATE unless the request brings one."""
    return msgspec.structs.replace(chat_request, sampling=held.sampling, model=held.model.asked,
                                   template=chat_request.template or models.go_template(held.model))


def needs(chat_request: ChatRequest, prompt: Prompt | None = None) -> tuple[str, ...]:
    """The capabilities a request asks of its model (Ollama's list before CheckCapabilities)."""
    wanted = ["completion"]
    if chat_request.tools:
        wanted.append("tools")
    if chat_request.think:
        wanted.append("thinking")
    if prompt is not None and prompt.suffix and not prompt.raw:
        wanted.append("insert")
    if any(m.get("images") for m in chat_request.messages) or prompt is not None and prompt.images:
        wanted.append("vision")
    return tuple(wanted)


async def admit(request: web.Request, model: ResolvedModel, chat_request: ChatRequest,
                prompt: Prompt | None = None) -> None:
    """Refuses a request past this server's bounds (400, 413 for its text) or one the model cannot serve."""
    settings = services(request).settings
    bounds.messages(settings, chat_request.messages)
    bounds.schema(settings, chat_request.format, "format")
    for tool in chat_request.tools:
        bounds.schema(settings, tool, "tools")
    extra = (prompt.text, prompt.system, prompt.suffix) if prompt is not None else ()
    bounds.text(settings, chat_request.messages, chat_request.template, *extra)
    await blocking(functools.partial(models.require, route="chat" if prompt is None else "generate"), model,
                   *needs(chat_request, prompt))
    pictures = [*images.of_messages(chat_request.messages),
                *((f"images[{k}]", text) for k, text in enumerate(prompt.images if prompt is not None else ()))]
    if pictures:
        await blocking(images.check, pictures, settings.max_image_pixels)


async def converse(request: web.Request, model: ResolvedModel, options: Options | None, keep_alive: float | None,
                   chat_request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
    """Holds the model and streams its answer to a conversation, sampled as options and Modelfile say."""
    await admit(request, model, chat_request)
    async with hold(request, model, options, keep_alive) as held:
        async for event in answer(request, held, ChatJob(chat=_for_model(held, chat_request))):
            yield event


@dataclass(frozen=True)
class Prompt:
    """What /api/generate and /v1/completions complete: a prompt, and what goes around it."""

    text: str
    system: str = ""  # replaces the Modelfile's SYSTEM
    images: tuple[str, ...] = ()
    raw: bool = False  # the text as it is, without the template
    suffix: str = ""  # fill in the middle, through a template that takes a suffix


def prompt_job(held: Held, chat_request: ChatRequest, prompt: Prompt, *, context: tuple[int, ...] = (),
               return_context: bool = False) -> ChatJob:
    """The prompt as one user turn after the Modelfile's SYSTEM and MESSAGEs, or raw, or around a suffix.

    With a `context` the MESSAGEs are left out, as Ollama leaves them: the earlier exchange already began
    the conversation.
    """
    chat_request = _for_model(held, chat_request)
    if prompt.raw or prompt.suffix:
        return ChatJob(chat=chat_request, completion=Completion(prompt=prompt.text, raw=prompt.raw,
                                                                suffix=prompt.suffix, images=prompt.images),
                       context=context, return_context=return_context)
    turns: list[dict[str, Any]] = [{"role": "system", "content": prompt.system}] if prompt.system else []
    turns.append({"role": "user", "content": prompt.text, **({"images": list(prompt.images)} if prompt.images else {})})
    return ChatJob(chat=msgspec.structs.replace(chat_request, messages=with_modelfile(held.model, turns,
                                                                                     examples=not context)),
                   context=context, return_context=return_context)


async def complete(request: web.Request, model: ResolvedModel, options: Options | None, keep_alive: float | None,
                   chat_request: ChatRequest, prompt: Prompt) -> AsyncGenerator[ChatEvent, None]:
    """Holds the model and streams its completion of a prompt."""
    await admit(request, model, chat_request, prompt)
    async with hold(request, model, options, keep_alive) as held:
        async for event in answer(request, held, prompt_job(held, chat_request, prompt)):
            yield event


async def embed(request: web.Request, model: ResolvedModel, inputs: list[str], *, options: Options | None,
                keep_alive: float | None, truncate: bool = True,
                dimensions: int | None = None) -> tuple[list[list[float]], int]:
    """One vector per input and the tokens embedded; no inputs only loads the model. The client leaving
    stops the embedding (after the decode in progress)."""
    bounds.embed_inputs(services(request).settings, inputs)
    async with hold(request, model, options, keep_alive) as held:
        if not inputs:
            return [], 0
        result = await held.runner.embed(inputs, truncate=truncate, dimensions=dimensions)
    record(request).prompt_tokens = result.prompt_eval_count
    return result.embeddings, result.prompt_eval_count
