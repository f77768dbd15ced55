"""The RPC runner process: every model that uses RPC workers runs here, never in the server.

llama.cpp aborts its process when a worker dies or answers nonsense. Here that
ends only this process: the server sees the socket close, fails the requests
in flight with the reason, and starts a new process for the next request.
One process serves every such model, because a worker serves one client at a
time: two processes would each wait for the other to let go of the workers.

Started by `remote` as `python -m ollama_py.cluster.child FD [--debug]`, FD
being its end of the socket pair; it exits when the server closes that.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from ollama_py.cluster import placement, protocol
from ollama_py.cluster.protocol import Cancel, Embed, Load, Start, Submit, Unload
from ollama_py.engine.embed import Embedder
from ollama_py.engine.runner import Runner
from ollama_py.engine.types import Done, EngineError, Token
from ollama_py.llama.devices import add_rpc_server
from ollama_py.llama.lib import native_log
from ollama_py.llama.model import Model, ModelOptions

log = logging.getLogger(__name__)
M = TypeVar("M", Start, Load, Unload, Embed)


@dataclass(eq=False)
class _Hosted:
    model: Model
    runner: Runner
    load: Load
    embedder: Embedder | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def embed(self, message: Embed) -> protocol.Embedded:
        with self._lock:
            if self.embedder is None:  # made on first use, as the scheduler makes it for a model in the server
                opts = self.load.runner
                self.embedder = Embedder(self.model, num_ctx=opts.num_ctx, max_inputs=opts.num_parallel,
                                         num_thread=opts.num_thread)
        result = self.embedder.embed(message.inputs, truncate=message.truncate, dimensions=message.dimensions)
        return protocol.Embedded(call=message.call, embeddings=result.embeddings,
                                 prompt_eval_count=result.prompt_eval_count, total_duration=result.total_duration)

    def close(self) -> None:
        self.runner.close()
        if self.embedder is not None:
            self.embedder.close()
        self.model.close()


class _Child:
    """Applies the server's messages; writes each step's events back in one frame."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._hosted: dict[int, _Hosted] = {}
        self._streams: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._endpoints: dict[str, str] = {}  # device name to worker endpoint
        self._events = protocol.Events()
        self._flush_pending = False

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while (body := await protocol.read_frame_async(reader)) is not None:
            match protocol.to_runner.decode(body):
                case Start() as start:
                    self._call(self._start, start)
                case Load() as load:
                    self._call(self._load, load)
                case Unload() as unload:
                    self._call(self._unload, unload)
                case Embed() as embed:
                    self._call(self._embed, embed)
                case Submit() as submit:
                    self._streams[submit.id] = asyncio.create_task(self._stream(submit))
                case Cancel(id=request_id):
                    if (task := self._streams.get(request_id)) is not None:
                        task.cancel()
            self._schedule_flush()  # the stats changed: a request waits, or a model came or went
        for task in [*self._streams.values(), *self._tasks]:
            task.cancel()
        for hosted in self._hosted.values():
            await asyncio.to_thread(hosted.close)

    def _call(self, work: Callable[[M], protocol.ToServer], message: M) -> None:
        """Runs a blocking call in a thread, so streams go on meanwhile; its reply is one frame."""

        async def run() -> None:
            reply: protocol.ToServer
            try:
                reply = await asyncio.to_thread(work, message)
            except Exception as exc:
                log.warning("%s failed: %s", type(message).__name__, exc)
                reply = protocol.Error(call=message.call, message=str(exc))
            self._writer.write(protocol.frame(reply))
            self._schedule_flush()

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, start: Start) -> protocol.Started:
        remote: list[tuple[str, str]] = []
        for endpoint in start.workers:
            remote += [(device.name, endpoint) for device in add_rpc_server(endpoint)]
        self._endpoints = dict(remote)
        return protocol.Started(call=start.call, devices=tuple(remote))

    def _load(self, load: Load) -> protocol.Loaded:
        options = ModelOptions(n_gpu_layers=load.num_gpu, tensor_split=load.tensor_split or None)
        with placement.recording() as assigned:
            model = Model(load.path, options)
        try:
            runner = Runner(model, load.runner)
        except BaseException:
            model.close()
            raise
        self._hosted[load.model] = _Hosted(model, runner, load)
        where = placement.summarize(assigned, self._endpoints)
        log.info("loaded %s: %s", model.path.name, ", ".join(f"{p.device} {p.layers}" for p in where))
        return protocol.Loaded(call=load.call, num_ctx=runner.num_ctx, placement=where)

    def _unload(self, unload: Unload) -> protocol.Unloaded:
        hosted = self._hosted.pop(unload.model, None)
        if hosted is not None:
            hosted.close()
        return protocol.Unloaded(call=unload.call)

    def _embed(self, embed: Embed) -> protocol.Embedded:
        return self._hosted[embed.model].embed(embed)

    async def _stream(self, submit: Submit) -> None:
        try:
            hosted = self._hosted.get(submit.model)
            if hosted is None:
                raise EngineError("the model is not loaded in the RPC runner process")
            async with aclosing(hosted.runner.submit(submit.request)) as stream:  # type: ignore[type-var]
                async for event in stream:
                    if isinstance(event, Token):
                        self._events.tokens.append((submit.id, event))
                    elif isinstance(event, Done):
                        self._events.done.append((submit.id, event))
                    self._schedule_flush()
        except (EngineError, ValueError) as exc:
            self._events.failed.append((submit.id, str(exc)))
            self._schedule_flush()
        finally:
            self._streams.pop(submit.id, None)

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Sends what this turn of the loop produced (a runner step's events arrive in one turn)."""
        self._flush_pending = False
        events = self._events
        self._events = protocol.Events()
        stats = [(number, hosted.runner.stats()) for number, hosted in self._hosted.items()]
        self._writer.write(protocol.frame(protocol.Events(tokens=events.tokens, done=events.done,
                                                          failed=events.failed, stats=stats)))


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
        await _Child(writer).serve(reader)
    finally:
        writer.close()


def main(argv: list[str]) -> None:
    _configure_logging("--debug" in argv[1:])
    asyncio.run(_main(int(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
