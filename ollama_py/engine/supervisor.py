"""The server's side of the runner processes: starts them, watches them, and speaks to their models.

Each loaded model runs in a runner process of its own (`host`), as Ollama runs
its models: whatever a model's files, its template or a prompt do to llama.cpp
(an abort, a segfault, a loop, a memory blow-up), only that process dies. Models
split across RPC workers share one process instead, because a worker serves one
client at a time: two processes would each wait for the other to let go.

A watchdog stops a process that sends nothing while it has work for longer
than OLLAMA_PY_RUNNER_TIMEOUT (a step or a template that never ends), whose
load takes longer than OLLAMA_LOAD_TIMEOUT, or whose resident memory passes its
bound (OLLAMA_PY_RUNNER_MEMORY, else twice the model's planned host memory and
a margin): resident memory rather than an address-space limit, which would
break CUDA's large virtual reservations. When a process dies, every request in
it fails with the reason, and its models report themselves dead.
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
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from ollama_py.engine import wire
from ollama_py.engine.backend import LoadSpec, Opened, gpu_free_memory
from ollama_py.engine.chat import ChatDone, ChatEvent
from ollama_py.engine.embed import EmbedResult
from ollama_py.engine.limits import WorkLimits
from ollama_py.engine.placement import Placement
from ollama_py.engine.prompt_cache import auto_ram_bytes
from ollama_py.engine.runner import RunnerOptions, RunnerStats, events_until_done
from ollama_py.engine.types import EngineError, Failed, InvalidRequest, RunnerCrashed
from ollama_py.settings import Settings

log = logging.getLogger(__name__)

# ggml_abort's line: "path/file.cpp:123: message".
_ABORT = re.compile(r"^\S+\.(?:c|cc|cpp|h):\d+: (.+)$")
_LEVELS = {name: getattr(logging, name) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
_TAIL = 40  # lines of the process's output kept to explain its death
_EXIT_WAIT = 30.0  # seconds a closing process gets to free its models before it is killed
_WATCH_EVERY = 0.5  # seconds between the watchdog's looks
_MEMORY_MARGIN = 1 << 30  # bytes over twice the planned size: the interpreter, buffers, a long prompt
_PAGE = os.sysconf("SC_PAGE_SIZE")
R = TypeVar("R", bound=wire.ToServer)


def _resident(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class _Stream:
    """The asyncio end of one request; only its event loop's thread reads the queue."""

    def __init__(self, number: int, loop: asyncio.AbstractEventLoop) -> None:
        self.number = number
        self.loop = loop
        self.queue: asyncio.Queue[ChatEvent | Failed] = asyncio.Queue()


class _Link:
    """One runner process, from its start to its exit: the socket, the threads reading and watching it."""

    def __init__(self, *, workers: tuple[str, ...], debug: bool, timeout: float, memory_limit: int,
                 numbers: Callable[[], int], limits: WorkLimits, explain: Callable[[], str] = lambda: "",
                 on_death: Callable[[], None] = lambda: None) -> None:
        self.workers = workers
        self._timeout = timeout
        self.memory_limit = memory_limit
        self._next = numbers
        self._explain = explain  # more words on a death (which RPC worker is gone)
        self._on_death = on_death
        self.models: set[int] = set()
        self.stats: dict[int, RunnerStats] = {}
        self.dead: str | None = None
        self._closing = False
        self._stopped = ""  # why the watchdog stopped it
        self._heard = time.monotonic()  # when the last frame came
        self._load_deadline = 0.0  # monotonic time a load in progress must end by; 0 when none
        self._ended = threading.Event()
        self._lock = threading.Lock()  # orders "is it dead" against new calls and streams
        self._send_lock = threading.Lock()  # one frame at a time on the socket
        self._calls: dict[int, Future[wire.ToServer]] = {}
        self._streams: dict[int, _Stream] = {}
        self._tail: deque[str] = deque(maxlen=_TAIL)
        ours, theirs = socket.socketpair()
        # -P: the server's working directory is not searched for modules.
        argv = [sys.executable, "-P", "-m", "ollama_py.engine.host", str(theirs.fileno()),
                msgspec.json.encode(limits).decode()]
        argv += ["--debug"] if debug else []
        # No backtrace on abort: ggml would try to attach gdb, and the reason is the line before it.
        self._proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      env={**os.environ, "GGML_NO_BACKTRACE": "1"})
        theirs.close()
        self.pid = self._proc.pid
        self._sock = ours
        self._pump = threading.Thread(target=self._relay_output, name=f"runner {self.pid} output", daemon=True)
        self._pump.start()
        self._reader = threading.Thread(target=self._read, name=f"runner {self.pid} reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._watch, name=f"runner {self.pid} watchdog", daemon=True).start()
        log.info("started runner process %d%s", self.pid,
                 f" for workers {', '.join(workers)}" if workers else "")

    # ---- calls and streams (any thread) --------------------------------------------------

    def call(self, make: Callable[[int], wire.ToRunner], expect: type[R], *, load_timeout: float = 0.0) -> R:
        """Sends a call and waits for its reply. Blocking.

        Raises InvalidRequest or EngineError for an Error reply, EngineError for a dead process. With
        `load_timeout`, the watchdog stops the process if the reply takes longer.
        """
        number, reply = self._register(load_timeout)
        try:
            self.send(make(number))
            answer = reply.result()
        finally:
            if load_timeout:
                self._load_deadline = 0.0
        return _answer(answer, expect)

    async def call_async(self, make: Callable[[int], wire.ToRunner], expect: type[R]) -> R:
        """Sends a call and awaits its reply without holding a thread. Cancelled (the client went away), it
        tells the process to stop the call's work. Raises as `call` does."""
        number, reply = self._register(0.0)
        try:
            self.send(make(number))
            answer = await asyncio.wrap_future(reply)
        except asyncio.CancelledError:
            with self._lock:
                self._calls.pop(number, None)
            with contextlib.suppress(EngineError):  # it died meanwhile: nothing left to cancel
                self.send(wire.Cancel(id=number))
            raise
        return _answer(answer, expect)

    def _register(self, load_timeout: float) -> tuple[int, Future[wire.ToServer]]:
        number = self._next()
        reply: Future[wire.ToServer] = Future()
        with self._lock:
            if self.dead is not None:
                raise EngineError(self.dead)
            self._calls[number] = reply
            if load_timeout:
                self._load_deadline = time.monotonic() + load_timeout
            if len(self._calls) == 1 and not self._streams:
                self._heard = time.monotonic()  # the watchdog counts from when there is work
        return number, reply

    def open(self, loop: asyncio.AbstractEventLoop) -> _Stream:
        stream = _Stream(self._next(), loop)
        with self._lock:
            if self.dead is not None:
                raise EngineError(self.dead)
            if not self._streams and not self._calls:
                self._heard = time.monotonic()
            self._streams[stream.number] = stream
        return stream

    def forget(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.pop(stream.number, None)

    def send(self, message: wire.ToRunner) -> None:
        if self.dead is not None:
            raise EngineError(self.dead)
        with self._send_lock:
            try:
                self._sock.sendall(wire.frame(message))
            except OSError as exc:
                raise EngineError(f"the runner process is gone: {exc}") from None

    def close(self) -> None:
        """Lets the process free its models and exit (killed if it takes too long); reaps it."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        try:
            self._proc.wait(_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("runner process %d did not exit; killing it", self.pid)
            self._proc.kill()
        self._reader.join()
        self._sock.close()

    # ---- reader, watchdog and output threads ---------------------------------------------

    def _read(self) -> None:
        try:
            while (body := wire.read_frame(self._sock)) is not None:
                self._heard = time.monotonic()
                self._dispatch(wire.to_server.decode(body))
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            if not self._closing:
                log.error("lost runner process %d's stream: %s", self.pid, exc)
            self._proc.kill()
        self._ended.set()
        self._died(self._reason())

    def _watch(self) -> None:
        while not self._ended.wait(_WATCH_EVERY):
            why = self._overdue()
            if why:
                self._stopped = why
                log.error("stopping runner process %d: %s", self.pid, why)
                self._proc.kill()
                return

    def _overdue(self) -> str:
        """Why the process must be stopped now, or ""."""
        now = time.monotonic()
        if self._load_deadline and now > self._load_deadline:
            return "the model did not finish loading in time (OLLAMA_LOAD_TIMEOUT)"
        busy = self._streams or (self._calls and not self._load_deadline)
        if busy and now - self._heard > self._timeout:
            return f"it sent nothing for {self._timeout:g}s while it had work (OLLAMA_PY_RUNNER_TIMEOUT)"
        resident = _resident(self.pid)
        if self.memory_limit and resident > self.memory_limit:
            return (f"it used {resident >> 20} MiB of memory, more than its bound of {self.memory_limit >> 20} MiB "
                    "(OLLAMA_PY_RUNNER_MEMORY)")
        return ""

    def _dispatch(self, message: wire.ToServer) -> None:
        if not isinstance(message, wire.Events):
            with self._lock:
                waiter = self._calls.pop(message.call, None)
            if waiter is not None:
                waiter.set_result(message)
            return
        self.stats = dict(message.stats)
        items: list[tuple[int, ChatEvent | Failed]] = [*message.deltas, *message.done]
        items += [(number, Failed(message=f.message, invalid=f.invalid)) for number, f in message.failed]
        self._deliver(items)

    def _deliver(self, items: Iterable[tuple[int, ChatEvent | Failed]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, ChatEvent | Failed]]] = {}
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
            return "the runner process was stopped"
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        lines = list(self._tail)
        detail = next((m[1] for line in reversed(lines) if (m := _ABORT.match(line))), lines[-1] if lines else "")
        if self._stopped:
            how, detail = "stopped", self._stopped
        extra = self._explain()
        reason = f"the runner process stopped ({how}){': ' + detail if detail else ''}{'; ' + extra if extra else ''}"
        log.error("runner process %d: %s", self.pid, reason)
        self._on_death()
        return reason

    def _died(self, reason: str) -> None:
        with self._lock:
            self.dead = reason
            calls, self._calls = self._calls, {}
            streams, self._streams = self._streams, {}
        for waiter in calls.values():
            waiter.set_result(wire.Error(call=0, message=reason))
        for stream in streams.values():
            failure: list[tuple[_Stream, ChatEvent | Failed]] = [(stream, Failed(message=reason))]
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
            log.log(level or logging.ERROR, "runner process %d: %s", self.pid, rest if level else line)


def _answer(answer: wire.ToServer, expect: type[R]) -> R:
    if isinstance(answer, wire.Error):
        raise (InvalidRequest if answer.invalid else EngineError)(answer.message)
    assert isinstance(answer, expect), answer
    return answer


def _put(batch: list[tuple[_Stream, ChatEvent | Failed]]) -> None:
    for stream, event in batch:
        stream.queue.put_nowait(event)


class ProcessRunner:
    """One model loaded in a runner process: what the server holds of it, and how it asks the model for work."""

    def __init__(self, backend: ProcessBackend, link: _Link, number: int, options: RunnerOptions,
                 loaded: wire.Loaded) -> None:
        self.options = options
        self.num_ctx: int = loaded.num_ctx
        self.n_vocab: int = loaded.n_vocab
        self.placement: tuple[Placement, ...] = loaded.placement
        self.link = link
        self.number = number
        self._backend = backend

    @property
    def pid(self) -> int:
        return self.link.pid

    @property
    def alive(self) -> bool:
        return self.link.dead is None

    async def chat(self, job: wire.ChatJob) -> AsyncIterator[ChatEvent]:
        """Streams the answer, ending with ChatDone; closing the iterator early cancels the request.

        A request the model refuses (its template, the prompt's length) raises InvalidRequest before the
        first event; a dead process raises EngineError.
        """
        stream = self.link.open(asyncio.get_running_loop())

        def cancel() -> None:
            if self.link.dead is None:
                with contextlib.suppress(EngineError):  # it died meanwhile: nothing left to cancel
                    self.link.send(wire.Cancel(id=stream.number))

        try:
            self.link.send(wire.Chat(model=self.number, id=stream.number, job=job))
            async with contextlib.aclosing(events_until_done(stream.queue, cancel, ChatDone)) as events:
                async for event in events:
                    yield event
        finally:
            self.link.forget(stream)

    async def embed(self, inputs: list[str], *, truncate: bool = True, dimensions: int | None = None) -> EmbedResult:
        """The inputs' vectors; cancelled, the process stops embedding after the decode in progress."""
        reply = await self.link.call_async(lambda call: wire.Embed(
            call=call, model=self.number, inputs=inputs, truncate=truncate, dimensions=dimensions), wire.Embedded)
        return EmbedResult(embeddings=reply.embeddings, prompt_eval_count=reply.prompt_eval_count,
                           total_duration=reply.total_duration)

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        reply = await self.link.call_async(lambda call: wire.Tokenize(
            call=call, model=self.number, text=text, add_special=add_special), wire.Tokens)
        return reply.tokens

    async def detokenize(self, tokens: list[int]) -> str:
        reply = await self.link.call_async(lambda call: wire.Detokenize(
            call=call, model=self.number, tokens=tokens), wire.Text)
        return reply.text

    def stats(self) -> RunnerStats:
        slots = self.options.num_parallel
        if self.alive and self.number in self.link.stats:
            return self.link.stats[self.number]
        return RunnerStats(slots_busy=0, slots_total=slots, waiting=0, kv_tokens=0, kv_capacity=self.num_ctx * slots)

    def close(self) -> None:
        """Unloads the model; its process exits with the last model it holds. Blocking."""
        self._backend.release(self)


@dataclass(frozen=True)
class _Limits:
    timeout: float
    load_timeout: float
    memory: int  # bytes; 0: derived from each model's plan


class ProcessBackend:
    """Runs each model in a runner process of its own, or every model split across RPC workers in one.

    `check_workers` says whether each worker can serve now (it raises when one cannot) before a process
    hands them to llama.cpp, which would abort or hang on a bad one; it also names the dead worker after
    a process dies. Both come from whoever builds the server, which knows the RPC protocol.
    """

    def __init__(self, settings: Settings, *, workers: tuple[str, ...] = (),
                 check_workers: Callable[[tuple[str, ...]], None] = lambda _: None,
                 explain_death: Callable[[tuple[str, ...]], str] = lambda _: "") -> None:
        self.workers = workers
        self._tensor_split = settings.tensor_split
        self._debug = settings.debug
        self._limits = _Limits(timeout=float(settings.runner_timeout), load_timeout=float(settings.load_timeout),
                               memory=settings.runner_memory)
        self._work_limits = WorkLimits.from_settings(settings)
        self._check_workers = check_workers
        self._explain_death = explain_death
        self._lock = threading.Lock()  # one start, load or unload of the shared process at a time
        self._shared: _Link | None = None
        self._links: set[_Link] = set()
        self._numbers = itertools.count(1).__next__
        self.failures = 0  # runner processes that died or were stopped, over the server's life

    def open(self, spec: LoadSpec) -> Opened:
        """Loads the model as `spec` says in a runner process. Blocking.

        Raises RunnerCrashed when the process dies or is stopped while it loads, EngineError (or
        InvalidRequest) when llama.cpp refuses the model cleanly, and what `check_workers` raises.
        """
        remote = bool(self.workers) and spec.num_gpu != 0
        offload = None if remote else spec.offload(gpu_free_memory())
        if offload is not None:
            log.info("%s: %d of %d layers on the GPU (%d of %d bytes)", spec.path.name, offload.gpu_layers,
                     offload.n_layers, offload.size_vram, offload.size)
        size = offload.size if offload is not None else spec.path.stat().st_size
        size += spec.projector.stat().st_size if spec.projector is not None else 0  # loaded beside the weights
        if offload is None and spec.drafting is not None:
            size += spec.drafting.stat().st_size  # its weights (a plan counts its cache too)
        # Resolved here, once, so the memory bound allows for exactly what the process may keep.
        cache_ram = spec.runner.cache_ram if spec.runner.cache_ram >= 0 else auto_ram_bytes()
        memory = (self._limits.memory
                  or 2 * (size - (offload.size_vram if offload else 0)) + _MEMORY_MARGIN + cache_ram)
        link = self._shared_link(memory) if remote else self._link(memory, ())
        number = self._numbers()
        num_gpu = spec.num_gpu if remote else (offload.gpu_layers if offload else 0)
        try:
            loaded = link.call(lambda call: wire.Load(
                call=call, model=number, path=str(spec.path),
                runner=msgspec.structs.replace(spec.runner, cache_ram=cache_ram), num_gpu=num_gpu,
                tensor_split=self._tensor_split if remote else (), template=spec.template,
                adapters=tuple(str(a) for a in spec.adapters),
                projector=str(spec.projector) if spec.projector is not None else "",
                draft=str(spec.drafting) if spec.drafting is not None else ""),
                wire.Loaded, load_timeout=self._limits.load_timeout)
        except EngineError as exc:
            crashed = link.dead is not None
            if not link.models:
                self._drop(link)
            if crashed:
                raise RunnerCrashed(str(exc)) from None
            raise
        link.models.add(number)
        runner = ProcessRunner(self, link, number, spec.runner, loaded)
        if remote:
            log.info("%s split across %s", spec.path.name,
                     ", ".join(f"{p.device}{f' ({p.endpoint})' if p.endpoint else ''}: {p.layers} layers"
                               for p in loaded.placement))
        return Opened(runner=runner, placement=loaded.placement, offload=offload, size=size)

    def _link(self, memory: int, workers: tuple[str, ...]) -> _Link:
        link = _Link(workers=workers, debug=self._debug, timeout=self._limits.timeout, memory_limit=memory,
                     numbers=self._numbers, limits=self._work_limits, explain=lambda: self._explain_death(workers),
                     on_death=self._died)
        with self._lock:
            self._links.add(link)
        return link

    def _shared_link(self, memory: int) -> _Link:
        """The one process for models split across the workers, started (after a handshake) if needed."""
        with self._lock:
            link = self._shared
        if link is not None and link.dead is None:
            if not self._limits.memory:  # derived: the bound grows with each model the process takes
                link.memory_limit += memory
            return link
        self._check_workers(self.workers)
        link = self._link(memory, self.workers)
        try:
            link.call(lambda call: wire.Start(call=call, workers=self.workers), wire.Started,
                      load_timeout=self._limits.load_timeout)
        except EngineError:
            self._drop(link)
            raise
        with self._lock:
            self._shared = link
        return link

    def _died(self) -> None:
        with self._lock:
            self.failures += 1

    def release(self, runner: ProcessRunner) -> None:
        """Unloads one model; a process exits with the last model it holds, freeing its memory and workers."""
        link = runner.link
        link.models.discard(runner.number)
        if link.dead is None and link.models:
            try:
                link.call(lambda call: wire.Unload(call=call, model=runner.number), wire.Unloaded)
            except EngineError as exc:
                log.warning("unloading from runner process %d failed: %s", link.pid, exc)
        if not link.models:
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        link.close()
        with self._lock:
            self._links.discard(link)
            if self._shared is link:
                self._shared = None

    def close(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            self._drop(link)
