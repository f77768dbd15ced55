"""The runner process: where a loaded model lives, apart from the server.

Everything that runs native code on what a user sent or stored runs here:
loading the GGUF, the chat template (llama.cpp's Jinja), tokenizing, the
continuous-batching runner, parsing tool calls and reasoning, embeddings. An
abort, a segfault, a template that loops or a memory blow-up ends this process
only; the server sees its socket close (or its watchdog fires), fails the
requests that were in it and keeps serving every other model.

Each message from the server is applied here; each turn of the event loop
sends one Events frame with every stream's new text (a runner step's tokens
arrive in one turn), not one frame per token.

A request's rendering is bounded (engine/limits.py): a Go template stops at
its limits or when the request is cancelled; llama.cpp's Jinja cannot be
stopped midway, so a rendering that overruns twice its time fails its request
and this process exits, for the server to start the model afresh.

Started by the supervisor as `python -P -m ollama_py.engine.host FD LIMITS [--debug]`,
FD being its end of the socket pair, LIMITS the WorkLimits as JSON; it exits when the server closes that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec

from ollama_py.engine import placement, wire
from ollama_py.engine.chat import ChatDelta, ChatFormatter, ChatRequest, PreparedChat, chat
from ollama_py.engine.embed import Embedder
from ollama_py.engine.limits import WorkLimits
from ollama_py.engine.runner import Runner
from ollama_py.engine.types import EngineError
from ollama_py.llama.devices import add_rpc_server
from ollama_py.llama.lib import native_log
from ollama_py.llama.model import Model, ModelOptions
from ollama_py.llama.mtmd import Projector

log = logging.getLogger(__name__)
# The exit status of a process that gave up on a rendering it could not stop.
EXIT_RENDER_OVERRUN = 70
Call = wire.Start | wire.Load | wire.Unload | wire.Embed | wire.Tokenize | wire.Detokenize

# Rendered and tokenized once at load, so that a template or vocabulary that crashes or hangs llama.cpp does
# it while the model loads (and the server records the failure), not at some user's first request.
_PROBE = ChatRequest(id="load-probe", messages=({"role": "system", "content": "You are a helpful assistant."},
                                               {"role": "user", "content": "Hello! What can you do?"}))


@dataclass(eq=False)
class _Hosted:
    model: Model
    runner: Runner
    formatter: ChatFormatter
    load: wire.Load
    projector: Projector | None = None
    draft: Model | None = None
    embedder: Embedder | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def prepare(self, job: wire.ChatJob, cancelled: threading.Event | None = None) -> PreparedChat:
        """The job's prompt rendered and tokenized; ValueError for what the model cannot serve. Blocking."""
        num_ctx = self.runner.num_ctx
        if job.completion is not None:
            c = job.completion
            prepared = self.formatter.prepare_generate(job.chat, c.prompt, raw=c.raw, suffix=c.suffix,
                                                       images=c.images, num_ctx=num_ctx, cancelled=cancelled)
        else:
            prepared = self.formatter.prepare(job.chat, num_ctx, cancelled)
        if not job.chat.shift:
            prepared = PreparedChat(request=msgspec.structs.replace(prepared.request, shift=False),
                                    applied=prepared.applied)
        if not job.context:
            return prepared
        n_tokens = self.model.vocab.n_tokens
        bad = [t for t in job.context if not 0 <= t < n_tokens]
        if bad:
            if prepared.applied is not None:
                prepared.applied.close()
            raise ValueError(f"context: {bad[0]} is not a token of this model (0 to {n_tokens - 1})")
        request = msgspec.structs.replace(prepared.request, prompt=job.context + prepared.request.prompt)
        return PreparedChat(request=request, applied=prepared.applied)

    def embed(self, message: wire.Embed, cancelled: threading.Event | None = None) -> wire.Embedded:
        with self._lock:
            if self.embedder is None:  # made on first use: most models are never asked for embeddings
                opts = self.load.runner
                self.embedder = Embedder(self.model, num_ctx=opts.num_ctx, max_inputs=opts.num_parallel,
                                         num_thread=opts.num_thread)
        embedder = self.embedder
        result = self.runner.call(lambda: embedder.embed(message.inputs, truncate=message.truncate,
                                                         dimensions=message.dimensions, cancelled=cancelled))
        return wire.Embedded(call=message.call, embeddings=result.embeddings,
                             prompt_eval_count=result.prompt_eval_count, total_duration=result.total_duration)

    def close(self) -> None:
        self.runner.close()
        self.formatter.close()
        if self.embedder is not None:
            self.embedder.close()
        if self.projector is not None:
            self.projector.close()
        if self.draft is not None:
            self.draft.close()
        self.model.close()


class _Host:
    """Applies the server's messages; writes each loop turn's events back in one frame."""

    def __init__(self, writer: asyncio.StreamWriter, limits: WorkLimits) -> None:
        self._writer = writer
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._hosted: dict[int, _Hosted] = {}
        self._streams: dict[int, asyncio.Task[None]] = {}
        self._cancels: dict[int, threading.Event] = {}  # per call in progress: set when the server cancels it
        self._tasks: set[asyncio.Task[None]] = set()
        self._endpoints: dict[str, str] = {}  # device name to worker endpoint
        self._events = wire.Events()
        self._flush_pending = False

    async def serve(self, reader: asyncio.StreamReader) -> None:
        calls: dict[type[wire.ToRunner], Callable[[Any], wire.ToServer]] = {
            wire.Start: self._start, wire.Load: self._load, wire.Unload: self._unload, wire.Embed: self._embed,
            wire.Tokenize: self._tokenize, wire.Detokenize: self._detokenize}
        while (body := await wire.read_frame_async(reader)) is not None:
            match wire.to_runner.decode(body):
                case wire.Chat() as message:
                    self._streams[message.id] = asyncio.create_task(self._chat(message))
                case wire.Cancel(id=request_id):
                    if (task := self._streams.get(request_id)) is not None:
                        task.cancel()
                    elif (cancelled := self._cancels.get(request_id)) is not None:
                        cancelled.set()
                case call:
                    self._call(calls[type(call)], call)
            self._schedule_flush()  # the stats changed: a request waits, or a model came or went
        for task in [*self._streams.values(), *self._tasks]:
            task.cancel()
        for hosted in self._hosted.values():
            await asyncio.to_thread(hosted.close)

    def _call(self, work: Callable[[Any], wire.ToServer], message: Call) -> None:
        """Runs a blocking call in a thread, so streams go on meanwhile; its reply is one frame."""

        async def run() -> None:
            reply: wire.ToServer
            self._cancels[message.call] = threading.Event()
            try:
                reply = await asyncio.to_thread(work, message)
            except Exception as exc:
                log.warning("%s failed: %s", type(message).__name__, exc)
                reply = wire.Error(call=message.call, message=str(exc), invalid=isinstance(exc, ValueError))
            finally:
                self._cancels.pop(message.call, None)
            self._writer.write(wire.frame(reply))
            self._schedule_flush()

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, start: wire.Start) -> wire.Started:
        remote: list[tuple[str, str]] = []
        for endpoint in start.workers:
            remote += [(device.name, endpoint) for device in add_rpc_server(endpoint)]
        self._endpoints = dict(remote)
        return wire.Started(call=start.call, devices=tuple(remote))

    def _load(self, load: wire.Load) -> wire.Loaded:
        options = ModelOptions(n_gpu_layers=load.num_gpu, tensor_split=load.tensor_split or None)
        with placement.recording() as assigned:
            model = Model(load.path, options, adapters=tuple(Path(a) for a in load.adapters))
        runner: Runner | None = None
        formatter: ChatFormatter | None = None
        projector: Projector | None = None
        draft: Model | None = None
        try:
            if load.projector:
                projector = Projector(load.projector, model, n_threads=load.runner.num_thread)
            if load.draft:
                # On the GPU when the model's layers are; never on RPC workers, where each of its one-token
                # decodes would cross the network.
                draft = Model(load.draft, ModelOptions(n_gpu_layers=-1 if load.num_gpu and not self._endpoints else 0))
            runner = Runner(model, load.runner, on_cancelled=self._stats_changed,
                            projector=Path(load.projector) if load.projector else None, draft=draft)
            formatter = ChatFormatter(model, load.template, self._limits, projector=projector)
            probe = formatter.prepare(_PROBE, runner.num_ctx)
            if probe.applied is not None:
                probe.applied.close()
        except BaseException:
            for part in (formatter, runner, projector, draft, model):
                if part is not None:
                    part.close()
            raise
        self._hosted[load.model] = _Hosted(model, runner, formatter, load, projector, draft)
        where = placement.summarize(assigned, self._endpoints) or placement.on_cpu(model.n_layer)
        log.info("loaded %s: %s", model.path.name, ", ".join(f"{p.device} {p.layers}" for p in where))
        return wire.Loaded(call=load.call, num_ctx=runner.num_ctx, n_vocab=model.vocab.n_tokens, placement=where)

    def _unload(self, unload: wire.Unload) -> wire.Unloaded:
        hosted = self._hosted.pop(unload.model, None)
        if hosted is not None:
            hosted.close()
        return wire.Unloaded(call=unload.call)

    def _embed(self, embed: wire.Embed) -> wire.Embedded:
        return self._model(embed.model).embed(embed, self._cancels.get(embed.call))

    def _tokenize(self, message: wire.Tokenize) -> wire.Tokens:
        vocab = self._model(message.model).model.vocab
        return wire.Tokens(call=message.call,
                           tokens=vocab.tokenize(message.text, add_special=message.add_special, parse_special=True))

    def _detokenize(self, message: wire.Detokenize) -> wire.Text:
        vocab = self._model(message.model).model.vocab
        bad = [t for t in message.tokens if not 0 <= t < vocab.n_tokens]
        if bad:
            raise ValueError(f"tokens: {bad[0]} is not a token of this model (0 to {vocab.n_tokens - 1})")
        return wire.Text(call=message.call, text=vocab.detokenize(message.tokens))

    def _model(self, number: int) -> _Hosted:
        hosted = self._hosted.get(number)
        if hosted is None:
            raise EngineError("the model is not loaded in its runner process")
        return hosted

    async def _chat(self, message: wire.Chat) -> None:
        cancelled = threading.Event()
        try:
            hosted = self._model(message.model)
            prepared = await self._prepare(hosted, message.job, cancelled)
            async with aclosing(chat(hosted.runner, prepared)) as events:  # type: ignore[type-var]
                async for event in events:
                    if isinstance(event, ChatDelta):
                        self._events.deltas.append((message.id, event))
                    else:
                        if message.job.return_context:
                            # Images are left out: `context` carries tokens only, as a later request sends it.
                            answer = hosted.model.vocab.tokenize(event.content, add_special=False)
                            prompt = tuple(t for t in prepared.request.prompt if t >= 0)
                            event = replace(event, context=prompt + tuple(answer))
                        self._events.done.append((message.id, event))
                    self._schedule_flush()
        except (ValueError, EngineError) as exc:
            self._events.failed.append((message.id, wire.Failure(message=str(exc),
                                                                 invalid=isinstance(exc, ValueError))))
            self._schedule_flush()
        except Exception as exc:  # our own fault; the request still ends, with a 500
            log.exception("request %d failed", message.id)
            self._events.failed.append((message.id, wire.Failure(message=f"internal error: {exc}")))
            self._schedule_flush()
        finally:
            cancelled.set()  # a rendering still going (the request was cancelled) stops at its next step
            self._streams.pop(message.id, None)

    async def _prepare(self, hosted: _Hosted, job: wire.ChatJob, cancelled: threading.Event) -> PreparedChat:
        """The job prepared in a thread, given twice the rendering time: a Go template stops by itself at its
        limits, but llama.cpp's Jinja cannot be stopped. One that overruns fails its request, and this process
        exits (its other requests fail too) so that the stuck thread goes with it."""
        work = asyncio.ensure_future(asyncio.to_thread(hosted.prepare, job, cancelled))
        overrun = 2 * self._limits.template_timeout
        try:
            done, _ = await asyncio.wait({work}, timeout=overrun)
        except asyncio.CancelledError:
            work.add_done_callback(_close_abandoned)
            raise
        if done:
            return work.result()
        work.add_done_callback(_close_abandoned)
        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._exit_overrun(overrun)))
        raise ValueError(f"rendering the prompt took longer than {overrun:g}s (twice OLLAMA_PY_TEMPLATE_TIMEOUT); "
                         "the model's runner process restarts")

    async def _exit_overrun(self, overrun: float) -> None:
        self._flush()
        await self._writer.drain()
        log.error("a prompt rendering ran past %gs and cannot be stopped; exiting so the model starts afresh",
                  overrun)
        os._exit(EXIT_RENDER_OVERRUN)

    def _stats_changed(self) -> None:
        """From a runner thread: a slot freed without an event, so the server's view of it is stale."""
        self._loop.call_soon_threadsafe(self._schedule_flush)

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Sends what this turn of the loop produced (a runner step's events arrive in one turn)."""
        self._flush_pending = False
        events = self._events
        self._events = wire.Events()
        stats = [(number, hosted.runner.stats()) for number, hosted in self._hosted.items()]
        self._writer.write(wire.frame(wire.Events(deltas=events.deltas, done=events.done, failed=events.failed,
                                                  stats=stats)))


def _close_abandoned(work: asyncio.Future[PreparedChat]) -> None:
    """Frees what a rendering nobody waits for made (its parser holds native memory)."""
    if not work.cancelled() and work.exception() is None and (applied := work.result().applied) is not None:
        applied.close()


def _configure_logging(debug: bool) -> None:
    """Lines for the server to relay (it reads the level word); llama.cpp's debug lines reach `placement`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    native_log.setLevel(logging.DEBUG)


async def _main(fd: int, limits: WorkLimits) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        await _Host(writer, limits).serve(reader)
    finally:
        writer.close()


def main(argv: list[str]) -> None:
    _configure_logging("--debug" in argv[2:])
    asyncio.run(_main(int(argv[0]), msgspec.json.decode(argv[1], type=WorkLimits)))


if __name__ == "__main__":
    main(sys.argv[1:])
