"""Which models are loaded: on demand, kept for keep_alive, evicted when too many.

All state lives on the event loop's thread and is changed only under one
asyncio condition; loading and freeing run in worker threads. Requests that
must wait (the model is reloading, or every slot of the model budget is busy)
wait on the condition, and at most OLLAMA_MAX_QUEUE of them may wait at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ollama_py.cluster.placement import Placement, on_cpu
from ollama_py.cluster.remote import RemoteEmbedder, RemoteRunner, RunnerProcess
from ollama_py.engine.chat import ChatFormatter
from ollama_py.engine.embed import Embedder
from ollama_py.engine.offload import Plan, plan, sizes
from ollama_py.engine.runner import ModelRunner, Runner, RunnerOptions
from ollama_py.llama.devices import devices
from ollama_py.llama.model import Model, ModelOptions
from ollama_py.settings import Settings
from ollama_py.store import gguf

log = logging.getLogger(__name__)

# Ollama's count limit on a machine without GPUs, used when the setting is 0.
_DEFAULT_MAX_LOADED = 3
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Busy(Exception):
    """Too many requests are waiting for a model (Ollama's ErrMaxQueue, a 503)."""

    def __init__(self) -> None:
        super().__init__("server busy, please try again.  maximum pending requests exceeded")


def parse_keep_alive(value: str | int | float) -> float:
    """Seconds from Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m", "-1").

    Negative means forever (math.inf).
    """
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _go_duration(text)
    return math.inf if seconds < 0 else seconds


def _go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text.lstrip("+-")
    total = 0.0
    number = ""
    unit = ""
    for ch in rest + " ":
        if ch.isdigit() or ch == ".":
            if unit:
                total += _unit(number, unit)
                number, unit = "", ""
            number += ch
        elif ch != " ":
            unit += ch
    if not number or not unit:
        raise ValueError(f"invalid duration {text!r}")
    return sign * (total + _unit(number, unit))


def _unit(number: str, unit: str) -> float:
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit {unit!r}")
    return float(number) * _DURATION_UNITS[unit]


class LoadSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that fixes how a model is loaded; a different spec means a reload."""

    path: Path
    runner: RunnerOptions = RunnerOptions()
    num_gpu: int = -1  # layers on the GPU; -1: as many as fit
    template: str = ""  # a Jinja chat template to use instead of the GGUF's own

    def offload(self, free_vram: int) -> Plan:
        """The GPU layers and memory of this spec, given the GPUs' free memory (Ollama's num_gpu)."""
        info = gguf.read(self.path)
        opts = self.runner
        need = sizes(info, num_ctx_total=opts.num_ctx * opts.num_parallel, kv_cache_type=opts.kv_cache_type,
                     n_ubatch=opts.num_batch)
        return plan(need, free_vram=free_vram, num_gpu=self.num_gpu)


@dataclass(eq=False)
class Loaded:
    """One loaded model, shared by every request that holds a lease on it."""

    name: str
    spec: LoadSpec
    model: Model
    runner: ModelRunner
    formatter: ChatFormatter
    load_duration: int  # nanoseconds, reported by the request that caused the load
    placement: tuple[Placement, ...] = ()  # where the layers live; empty where llama.cpp's choice is not known
    offload: Plan | None = None  # layers and memory on the local GPUs; None for RPC-split models
    refs: int = 0
    keep_alive: float = 300.0
    expires_at: float = math.inf  # loop time; inf while in use or kept forever
    timer: asyncio.TimerHandle | None = None
    embedder: Embedder | RemoteEmbedder | None = None
    _embedder_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get_embedder(self) -> Embedder | RemoteEmbedder:
        """The embedding context, made on first use: most models are never asked for embeddings."""
        async with self._embedder_lock:
            if isinstance(self.runner, RemoteRunner):
                self.embedder = self.runner.embedder
            elif self.embedder is None:
                opts = self.spec.runner
                self.embedder = await asyncio.to_thread(Embedder, self.model, num_ctx=opts.num_ctx,
                                                        max_inputs=opts.num_parallel, num_thread=opts.num_thread)
            return self.embedder

    def close(self) -> None:
        self.runner.close()
        self.formatter.close()
        if self.embedder is not None:
            self.embedder.close()
        self.model.close()


@dataclass(frozen=True)
class Lease:
    """A loaded model held for one request; `load_duration` is 0 unless this request loaded it."""

    loaded: Loaded
    load_duration: int


class Scheduler:
    def __init__(self, settings: Settings) -> None:
        self._max_loaded = settings.max_loaded_models or _DEFAULT_MAX_LOADED
        self._max_queue = settings.max_queue
        self._default_keep_alive = parse_keep_alive(settings.keep_alive)
        self._loaded: dict[str, Loaded] = {}
        self._cond = asyncio.Condition()
        self._waiting = 0
        # Models that use RPC workers run in a supervised process: llama.cpp aborts the one that uses a dead worker.
        self._remote = RunnerProcess(settings) if settings.rpc_servers else None

    @property
    def waiting(self) -> int:
        """Requests waiting for a model now (bounded by OLLAMA_MAX_QUEUE)."""
        return self._waiting

    def loaded(self) -> list[Loaded]:
        """The loaded models that can serve, longest remaining first (Ollama's /api/ps order).

        A model whose runner died (its RPC worker went) is left out; it is freed at the next request for it.
        """
        return sorted((e for e in self._loaded.values() if e.runner.alive), key=lambda e: -e.expires_at)

    @asynccontextmanager
    async def acquire(self, name: str, spec: LoadSpec, keep_alive: float | None = None) -> AsyncIterator[Lease]:
        """Holds the model loaded (loading it if needed) for the body of the `async with`."""
        if self._waiting >= self._max_queue:
            raise Busy()
        self._waiting += 1
        try:
            lease = await self._acquire(name, spec)
        finally:
            self._waiting -= 1
        try:
            yield lease
        finally:
            await self._release(lease.loaded, self._default_keep_alive if keep_alive is None else keep_alive)

    async def _acquire(self, name: str, spec: LoadSpec) -> Lease:
        async with self._cond:
            while True:
                entry = self._loaded.get(name)
                if entry is not None and entry.spec == spec and entry.runner.alive:
                    self._hold(entry)
                    return Lease(entry, 0)
                if entry is not None:
                    if entry.refs == 0:
                        log.info("reloading %s: %s", name, "load options changed" if entry.runner.alive else
                                 "its runner stopped")
                        await self._unload(entry)
                    else:
                        await self._cond.wait()  # in use with other options: reload once it is free
                    continue
                if len(self._loaded) >= self._max_loaded:
                    idle = [e for e in self._loaded.values() if e.refs == 0]
                    if not idle:
                        await self._cond.wait()
                        continue
                    victim = min(idle, key=lambda e: e.expires_at)
                    log.info("unloading %s to make room for %s", victim.name, name)
                    await self._unload(victim)
                    continue
                victim = self._vram_victim(spec)
                if victim is not None:
                    log.info("unloading %s to free GPU memory for %s", victim.name, name)
                    await self._unload(victim)
                    continue
                entry = await self._load(name, spec)
                self._hold(entry)
                return Lease(entry, entry.load_duration)

    def _vram_victim(self, spec: LoadSpec) -> Loaded | None:
        """An idle model on the GPU to unload when the new one would not fit there whole, as Ollama does."""
        on_gpu = [e for e in self._loaded.values() if e.refs == 0 and e.offload is not None and e.offload.size_vram]
        free = gpu_free_memory()
        if not on_gpu or not free or spec.num_gpu == 0 or spec.offload(free).full:
            return None
        return min(on_gpu, key=lambda e: e.expires_at)

    async def _load(self, name: str, spec: LoadSpec) -> Loaded:
        start = time.monotonic_ns()

        def load() -> Loaded:
            model, runner, placement, offload = self._open(spec)
            try:
                formatter = ChatFormatter(model, spec.template)
            except BaseException:
                runner.close()
                model.close()
                raise
            return Loaded(name=name, spec=spec, model=model, runner=runner, formatter=formatter, load_duration=0,
                          placement=placement, offload=offload)

        entry = await asyncio.to_thread(load)
        entry.load_duration = time.monotonic_ns() - start
        self._loaded[name] = entry
        log.info("loaded %s in %.2fs", name, entry.load_duration / 1e9)
        return entry

    def _open(self, spec: LoadSpec) -> tuple[Model, ModelRunner, tuple[Placement, ...], Plan | None]:
        """The model and its runner: split across the RPC workers unless it asks for no GPU layers. Blocking."""
        if self._remote is not None and spec.num_gpu != 0:
            vocab = Model(spec.path, ModelOptions(vocab_only=True))
            try:
                remote = self._remote.load(vocab, spec.runner, spec.num_gpu)
            except BaseException:
                vocab.close()
                raise
            return vocab, remote, remote.placement, None
        offload = spec.offload(gpu_free_memory())
        log.info("%s: %d of %d layers on the GPU (%d of %d bytes)", spec.path.name, offload.gpu_layers,
                 offload.n_layers, offload.size_vram, offload.size)
        model = Model(spec.path, ModelOptions(n_gpu_layers=offload.gpu_layers))
        try:
            runner = Runner(model, spec.runner)
        except BaseException:
            model.close()
            raise
        return model, runner, () if offload.gpu_layers else on_cpu(model.n_layer), offload

    def _hold(self, entry: Loaded) -> None:
        entry.refs += 1
        entry.expires_at = math.inf
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    async def _release(self, entry: Loaded, keep_alive: float) -> None:
        async with self._cond:
            entry.refs -= 1
            entry.keep_alive = keep_alive
            if entry.refs == 0 and self._loaded.get(entry.name) is entry:
                if keep_alive <= 0:
                    await self._unload(entry)
                elif math.isfinite(keep_alive):
                    loop = asyncio.get_running_loop()
                    entry.expires_at = loop.time() + keep_alive
                    entry.timer = loop.call_later(keep_alive, lambda: loop.create_task(self._expire(entry)))
            self._cond.notify_all()

    async def _expire(self, entry: Loaded) -> None:
        async with self._cond:
            if entry.refs == 0 and self._loaded.get(entry.name) is entry:
                log.info("keep_alive of %s expired", entry.name)
                await self._unload(entry)
                self._cond.notify_all()

    async def _unload(self, entry: Loaded) -> None:
        """Frees an idle model; the caller holds the condition."""
        if entry.timer is not None:
            entry.timer.cancel()
        del self._loaded[entry.name]
        await asyncio.to_thread(entry.close)

    async def unload(self, name: str) -> bool:
        """Unloads a model now if no request holds it (Ollama's keep_alive 0 with no prompt)."""
        async with self._cond:
            entry = self._loaded.get(name)
            if entry is None or entry.refs:
                return False
            await self._unload(entry)
            self._cond.notify_all()
            return True

    async def close(self) -> None:
        async with self._cond:
            for entry in list(self._loaded.values()):
                await self._unload(entry)
        if self._remote is not None:
            await asyncio.to_thread(self._remote.close)


def gpu_free_memory() -> int:
    """Free memory of the local GPUs as llama.cpp sees them (RPC workers are not local)."""
    return sum(d.memory_free for d in devices() if d.kind in ("gpu", "igpu") and not d.name.startswith("RPC"))
