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

Started by the supervisor as `python -P -m ollama_py.engine.host FD [--debug]`,
FD being its end of the socket pair; it exits when the server closes that.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from ollama_py.engine import placement, wire
from ollama_py.engine.chat import ChatDelta, ChatFormatter, ChatRequest, PreparedChat, chat
from ollama_py.engine.embed import Embedder
from ollama_py.engine.runner import Runner
from ollama_py.engine.types import EngineError
from ollama_py.llama.devices import add_rpc_server
from ollama_py.llama.lib import native_log
from ollama_py.llama.model import Model, ModelOptions

log = logging.getLogger(__name__)
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
    embedder: Embedder | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def prepare(self, job: wire.ChatJob) -> PreparedChat:
        """The job's prompt rendered and tokenized; ValueError for what the model cannot serve. Blocking."""
        num_ctx = self.runner.num_ctx
        if job.completion is not None:
            c = job.completion
            prepared = self.formatter.prepare_generate(job.chat, c.prompt, raw=c.raw, suffix=c.suffix,
                                                       num_ctx=num_ctx)
        else:
            prepared = self.formatter.prepare(job.chat, num_ctx)
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

    def embed(self, message: wire.Embed) -> wire.Embedded:
        with self._lock:
            if self.embedder is None:  # made on first use: most models are never asked for embeddings
                opts = self.load.runner
                self.embedder = Embedder(self.model, num_ctx=opts.num_ctx, max_inputs=opts.num_parallel,
                                         num_thread=opts.num_thread)
        result = self.embedder.embed(message.inputs, truncate=message.truncate, dimensions=message.dimensions)
        return wire.Embedded(call=message.call, embeddings=result.embeddings,
                             prompt_eval_count=result.prompt_eval_count, total_duration=result.total_duration)

    def close(self) -> None:
        self.runner.close()
        self.formatter.close()
        if self.embedder is not None:
            self.embedder.close()
        self.model.close()


class _Host:
    """Applies the server's messages; writes each loop turn's events back in one frame."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._hosted: dict[int, _Hosted] = {}
        self._streams: dict[int, asyncio.Task[None]] = {}
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
            try:
                reply = await asyncio.to_thread(work, message)
            except Exception as exc:
                log.warning("%s failed: %s", type(message).__name__, exc)
                reply = wire.Error(call=message.call, message=str(exc), invalid=isinstance(exc, ValueError))
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
            model = Model(load.path, options)
        runner: Runner | None = None
        formatter: ChatFormatter | None = None
        try:
            runner = Runner(model, load.runner)
            formatter = ChatFormatter(model, load.template)
            probe = formatter.prepare(_PROBE, runner.num_ctx)
            if probe.applied is not None:
                probe.applied.close()
        except BaseException:
            for part in (formatter, runner, model):
                if part is not None:
                    part.close()
            raise
        self._hosted[load.model] = _Hosted(model, runner, formatter, load)
        where = placement.summarize(assigned, self._endpoints) or placement.on_cpu(model.n_layer)
        log.info("loaded %s: %s", model.path.name, ", ".join(f"{p.device} {p.layers}" for p in where))
        return wire.Loaded(call=load.call, num_ctx=runner.num_ctx, n_vocab=model.vocab.n_tokens, placement=where)

    def _unload(self, unload: wire.Unload) -> wire.Unloaded:
        hosted = self._hosted.pop(unload.model, None)
        if hosted is not None:
            hosted.close()
        return wire.Unloaded(call=unload.call)

    def _embed(self, embed: wire.Embed) -> wire.Embedded:
        return self._model(embed.model).embed(embed)

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
        try:
            hosted = self._model(message.model)
            prepared = await asyncio.to_thread(hosted.prepare, message.job)
            async with aclosing(chat(hosted.runner, prepared)) as events:  # type: ignore[type-var]
                async for event in events:
                    if isinstance(event, ChatDelta):
                        self._events.deltas.append((message.id, event))
                    else:
                        if message.job.return_context:
                            answer = hosted.model.vocab.tokenize(event.content, add_special=False)
                            event = replace(event, context=prepared.request.prompt + tuple(answer))
                        self._events.done.append((message.id, event))
                    self._schedule_flush()
        except (ValueError, EngineError) as exc:
            self._events.failed.append((message.id, wire.Failure(message=str(exc),
                                                                 invalid=isinstance(exc, ValueError))))
            self._schedule_flush()
        finally:
            self._streams.pop(message.id, None)

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


def _configure_logging(debug: bool) -> None:
    """Lines for the server to relay (it reads the level word); llama.cpp's debug lines reach `placement`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    native_log.setLevel(logging.DEBUG)


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        await _Host(writer).serve(reader)
    finally:
        writer.close()


def main(argv: list[str]) -> None:
    _configure_logging("--debug" in argv[1:])
    asyncio.run(_main(int(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
