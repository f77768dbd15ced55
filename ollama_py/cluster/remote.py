"""The server's side of the RPC runner process: starts it, supervises it, runs models in it.

`RunnerProcess` keeps at most one runner process (`child` says why one),
starts it when the first model that uses workers loads, after a handshake
with each worker, and lets it go when the last such model unloads, so the
workers are free for another server. When it dies (llama.cpp aborts it if a
worker dies), every request in flight in it fails with the reason and each of
its models reports itself dead, so the scheduler loads it again, in a new
process, for the next request. `RemoteRunner` is one model in it, with the
in-process Runner's face.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass

import msgspec

from ollama_py.cluster import probe, protocol
from ollama_py.cluster.placement import Placement
from ollama_py.engine.embed import EmbedResult
from ollama_py.engine.runner import RunnerOptions, RunnerStats, events_until_done, fit_prompt
from ollama_py.engine.types import EngineError, Event, Failed, GenerationRequest
from ollama_py.llama.model import Model
from ollama_py.settings import Settings

log = logging.getLogger(__name__)

# ggml_abort's line: "path/file.cpp:123: message".
_ABORT = re.compile(r"^\S+\.(?:c|cc|cpp|h):\d+: (.+)$")
_LEVELS = {name: getattr(logging, name) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
_TAIL = 40  # lines of the process's output kept to explain its death
_EXIT_WAIT = 30.0  # seconds a closing process gets to free its models before it is killed
_PROBE_AFTER_DEATH = 2.0  # seconds each worker gets to answer when the process died, to name the dead one


class _Stream:
    """The asyncio end of one request; only its event loop's thread reads the queue."""

    def __init__(self, number: int, loop: asyncio.AbstractEventLoop) -> None:
        self.number = number
        self.loop = loop
        self.queue: asyncio.Queue[Event | Failed] = asyncio.Queue()


class _Link:
    """One runner process, from its start to its exit: the socket, the threads reading it, what waits on it."""

    def __init__(self, workers: tuple[str, ...], debug: bool, timeout: float, numbers: Callable[[], int]) -> None:
        self.workers = workers
        self._timeout = timeout
        self._next = numbers
        self.models: set[int] = set()
        self.stats: dict[int, RunnerStats] = {}
        self.dead: str | None = None
        self._closing = False
        self._silent = False  # stopped by the watchdog
        self._heard = time.monotonic()  # when the last frame came
        self._ended = threading.Event()
        self._lock = threading.Lock()  # orders "is it dead" against new calls and streams
        self._send_lock = threading.Lock()  # one frame at a time on the socket
        self._calls: dict[int, Future[protocol.ToServer]] = {}
        self._streams: dict[int, _Stream] = {}
        self._tail: deque[str] = deque(maxlen=_TAIL)
        ours, theirs = socket.socketpair()
        # -P: the server's working directory is not searched for modules.
        argv = [sys.executable, "-P", "-m", "ollama_py.cluster.child", str(theirs.fileno())]
        argv += ["--debug"] if debug else []
        # No backtrace on abort: ggml would try to attach gdb, and the reason is the line before it.
        self._proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      env={**os.environ, "GGML_NO_BACKTRACE": "1"})
        theirs.close()
        self._sock = ours
        self._pump = threading.Thread(target=self._relay_output, name="rpc runner output", daemon=True)
        self._pump.start()
        self._reader = threading.Thread(target=self._read, name="rpc runner reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._watch, name="rpc runner watchdog", daemon=True).start()
        log.info("started the RPC runner process (pid %d) for workers %s", self._proc.pid, ", ".join(workers))

    # ---- calls and streams (any thread) --------------------------------------------------

    def call(self, make: Callable[[int], protocol.ToRunner]) -> protocol.ToServer:
        """Sends a call and waits for its reply; raises EngineError for an Error reply or a dead process."""
        number = self._next()
        reply: Future[protocol.ToServer] = Future()
        with self._lock:
            if self.dead is not None:
                raise EngineError(self.dead)
            self._calls[number] = reply
        self.send(make(number))
        answer = reply.result()
        if isinstance(answer, protocol.Error):
            raise EngineError(answer.message)
        return answer

    def open(self, loop: asyncio.AbstractEventLoop) -> _Stream:
        stream = _Stream(self._next(), loop)
        with self._lock:
            if self.dead is not None:
                raise EngineError(self.dead)
            if not self._streams:
                self._heard = time.monotonic()  # the watchdog counts from when there is work
            self._streams[stream.number] = stream
        return stream

    def forget(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.pop(stream.number, None)

    def send(self, message: protocol.ToRunner) -> None:
        if self.dead is not None:
            raise EngineError(self.dead)
        with self._send_lock:
            try:
                self._sock.sendall(protocol.frame(message))
            except OSError as exc:
                raise EngineError(f"the RPC runner process is gone: {exc}") from None

    def close(self) -> None:
        """Lets the process free its models and exit (killed if it takes too long)."""
        self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._proc.wait(_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("the RPC runner process did not exit; killing it")
            self._proc.kill()
        self._reader.join()
        self._sock.close()

    # ---- reader and output threads ------------------------------------------------------

    def _read(self) -> None:
        try:
            while (body := protocol.read_frame(self._sock)) is not None:
                self._heard = time.monotonic()
                self._dispatch(protocol.to_server.decode(body))
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            if not self._closing:
                log.error("lost the RPC runner process's stream: %s", exc)
            self._proc.kill()
        self._ended.set()
        self._died(self._reason())

    def _watch(self) -> None:
        """Stops the process when it answers nothing for `timeout` while requests stream.

        llama.cpp's RPC client has no timeout: a worker cut off without a reset
        (a network partition, a frozen machine) would hold those requests forever.
        Each step of a generation sends a frame, so silence this long means stuck.
        """
        while not self._ended.wait(1.0):
            if self._streams and time.monotonic() - self._heard > self._timeout:
                self._silent = True
                log.error("the RPC runner process sent nothing for %gs while answering; stopping it", self._timeout)
                self._proc.kill()
                return

    def _dispatch(self, message: protocol.ToServer) -> None:
        if not isinstance(message, protocol.Events):
            with self._lock:
                waiter = self._calls.pop(message.call, None)
            if waiter is not None:
                waiter.set_result(message)
            return
        self.stats = dict(message.stats)
        items: list[tuple[int, Event | Failed]] = [*message.tokens, *message.done]
        items += [(number, Failed(message=text)) for number, text in message.failed]
        self._deliver(items)

    def _deliver(self, items: list[tuple[int, Event | Failed]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, Event | Failed]]] = {}
        with self._lock:
            for number, event in items:
                if (stream := self._streams.get(number)) is not None:
                    by_loop.setdefault(stream.loop, []).append((stream, event))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put, batch)
            except RuntimeError:
                log.debug("event loop closed; %d events dropped", len(batch))

    def _reason(self) -> str:
        code = self._proc.wait()
        self._pump.join()
        if self._closing:
            return "the RPC runner process was stopped"
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        lines = list(self._tail)
        detail = next((m[1] for line in reversed(lines) if (m := _ABORT.match(line))), lines[-1] if lines else "")
        if self._silent:
            how, detail = "stopped", f"no step finished in {self._timeout:g}s (OLLAMA_PY_RPC_TIMEOUT)"
        reason = f"the RPC runner process stopped ({how}){': ' + detail if detail else ''}; {self._suspects()}"
        log.error("%s", reason)
        return reason

    def _suspects(self) -> str:
        """Which workers fail a handshake now that the process is gone (it held their only connection)."""
        failures = []
        for worker in self.workers:
            try:
                probe.hello(worker, timeout=_PROBE_AFTER_DEATH)
            except probe.WorkerUnavailable as exc:
                failures.append(str(exc))
        return "; ".join(failures) or f"its workers ({', '.join(self.workers)}) answer again"

    def _died(self, reason: str) -> None:
        with self._lock:
            self.dead = reason
            calls, self._calls = self._calls, {}
            streams, self._streams = self._streams, {}
        for waiter in calls.values():
            waiter.set_result(protocol.Error(call=0, message=reason))
        for stream in streams.values():
            failure: list[tuple[_Stream, Event | Failed]] = [(stream, Failed(message=reason))]
            try:
                stream.loop.call_soon_threadsafe(_put, failure)
            except RuntimeError:
                log.debug("event loop closed; a failure was dropped")

    def _relay_output(self) -> None:
        """Logs the process's lines at the level each names (llama.cpp's abort line has none: an error)."""
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if not line:
                continue
            self._tail.append(line)
            word, _, rest = line.partition(" ")
            level = _LEVELS.get(word)
            log.log(level or logging.ERROR, "runner process: %s", rest if level else line)


def _put(batch: list[tuple[_Stream, Event | Failed]]) -> None:
    for stream, event in batch:
        stream.queue.put_nowait(event)


@dataclass(frozen=True)
class RemoteEmbedder:
    """Embeddings computed in the runner process, with the in-process Embedder's face."""

    runner: RemoteRunner

    def embed(self, inputs: list[str], *, truncate: bool = True, dimensions: int | None = None) -> EmbedResult:
        reply = self.runner.link.call(lambda call: protocol.Embed(
            call=call, model=self.runner.number, inputs=inputs, truncate=truncate, dimensions=dimensions))
        assert isinstance(reply, protocol.Embedded)
        return EmbedResult(embeddings=reply.embeddings, prompt_eval_count=reply.prompt_eval_count,
                           total_duration=reply.total_duration)

    def close(self) -> None:
        """Nothing to free here: the runner process frees the embedding context with the model."""


class RemoteRunner:
    """One model loaded in the runner process; to the server it is a Runner like any other.

    `model` is this process's vocabulary-only copy of the model (no weights):
    the server renders and tokenizes prompts with it, as for a local model.
    """

    def __init__(self, owner: RunnerProcess, link: _Link, number: int, model: Model, options: RunnerOptions,
                 loaded: protocol.Loaded) -> None:
        self.model = model
        self.options = options
        self.num_ctx: int = loaded.num_ctx
        self.placement: tuple[Placement, ...] = loaded.placement
        self.link = link
        self.number = number
        self.embedder = RemoteEmbedder(self)
        self._owner = owner

    async def submit(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Streams the request's events, ending with Done; closing the iterator early cancels it."""
        fit_prompt(list(request.prompt), self.num_ctx, request.sampling.num_keep, request.truncate)  # 400s here
        stream = self.link.open(asyncio.get_running_loop())

        def cancel() -> None:
            if self.link.dead is None:
                try:
                    self.link.send(protocol.Cancel(id=stream.number))
                except EngineError:
                    pass  # it died meanwhile: nothing left to cancel

        try:
            self.link.send(protocol.Submit(model=self.number, id=stream.number, request=request))
            async with contextlib.aclosing(events_until_done(stream.queue, cancel)) as events:
                async for event in events:
                    yield event
        finally:
            self.link.forget(stream)

    @property
    def alive(self) -> bool:
        return self.link.dead is None

    def stats(self) -> RunnerStats:
        slots = self.options.num_parallel
        if self.alive and self.number in self.link.stats:
            return self.link.stats[self.number]
        return RunnerStats(slots_busy=0, slots_total=slots, waiting=0, kv_tokens=0, kv_capacity=self.num_ctx * slots)

    def close(self) -> None:
        """Unloads the model from the runner process (which exits once it holds none)."""
        self._owner.release(self)


class RunnerProcess:
    """Runs every model that uses RPC workers, in one supervised process started on demand."""

    def __init__(self, settings: Settings) -> None:
        self.workers = settings.rpc_servers
        self._tensor_split = settings.tensor_split
        self._debug = settings.debug
        self._timeout = float(settings.rpc_timeout)
        self._lock = threading.Lock()  # one start, load or unload at a time
        self._link: _Link | None = None
        self._numbers = itertools.count(1).__next__

    def load(self, model: Model, options: RunnerOptions, num_gpu: int) -> RemoteRunner:
        """Loads `model` (this process's vocabulary-only copy) split across the workers. Blocking.

        Raises probe.WorkerUnavailable when a worker cannot serve, EngineError
        when the runner process cannot load the model or dies meanwhile.
        """
        with self._lock:
            link = self._link
            if link is None or link.dead is not None:
                for worker in self.workers:  # before llama.cpp, which would abort or hang on a bad one
                    probe.hello(worker)
                link = self._link = _Link(self.workers, self._debug, self._timeout, self._numbers)
                try:
                    link.call(lambda call: protocol.Start(call=call, workers=self.workers))
                except EngineError:
                    self._drop(link)
                    raise
            number = self._numbers()
            try:
                reply = link.call(lambda call: protocol.Load(
                    call=call, model=number, path=str(model.path), runner=options, num_gpu=num_gpu,
                    tensor_split=self._tensor_split))
            except EngineError:
                if not link.models:
                    self._drop(link)
                raise
            assert isinstance(reply, protocol.Loaded)
            link.models.add(number)
        log.info("%s split across %s", model.path.name,
                 ", ".join(f"{p.device}{f' ({p.endpoint})' if p.endpoint else ''}: {p.layers} layers"
                           for p in reply.placement))
        return RemoteRunner(self, link, number, model, options, reply)

    def release(self, runner: RemoteRunner) -> None:
        """Unloads one model; the process exits with the last one, freeing the workers."""
        with self._lock:
            link = runner.link
            link.models.discard(runner.number)
            if link.dead is None:
                try:
                    link.call(lambda call: protocol.Unload(call=call, model=runner.number))
                except EngineError as exc:
                    log.warning("unloading from the RPC runner process failed: %s", exc)
            if not link.models:
                self._drop(link)

    def _drop(self, link: _Link) -> None:
        link.close()
        if self._link is link:
            self._link = None

    def close(self) -> None:
        with self._lock:
            if self._link is not None:
                self._drop(self._link)
