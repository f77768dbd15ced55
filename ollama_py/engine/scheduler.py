"""Which models are loaded: on demand, kept for keep_alive, evicted when too many.

The table of models lives on the event loop's thread and changes only under
one asyncio condition, which guards the table and never a load: a load puts a
placeholder in the table (so the model counts against the budget and later
requests for it wait for it), releases the condition and loads in a worker
thread, so requests for models already loaded go on meanwhile. One load runs
at a time, so each load sees the memory the one before it took (Ollama never
loads two models on one GPU at once: memory use is unknown while a load ramps up).
Requests that must wait (their model is loading or reloading, or every place
in the model budget is busy) wait on the condition, at most OLLAMA_MAX_QUEUE
of them at once. Where a model runs is the business of the RunnerBackend the
scheduler is given.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ollama_py.engine.backend import LoadSpec, ModelRunner, RunnerBackend, gpu_free_memory
from ollama_py.engine.offload import Plan
from ollama_py.engine.placement import Placement
from ollama_py.engine.types import RunnerCrashed
from ollama_py.settings import Settings

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


@dataclass(eq=False)
class Loaded:
    """One loaded model, shared by every request that holds a lease on it."""

    name: str
    spec: LoadSpec
    runner: ModelRunner
    load_duration: int  # nanoseconds, reported by the request that caused the load
    placement: tuple[Placement, ...] = ()  # where the layers live; empty where llama.cpp's choice is not known
    offload: Plan | None = None  # layers and memory on the local GPUs; None where the model is not placed here
    size: int = 0  # bytes, as /api/ps reports them
    refs: int = 0
    keep_alive: float = 300.0
    expires_at: float = math.inf  # loop time; inf while in use or kept forever
    timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        self.runner.close()


@dataclass(eq=False)
class _Loading:
    """A model's place in the table while it loads; the task publishes the model, or removes this on failure."""

    spec: LoadSpec
    task: asyncio.Task[Loaded]


@dataclass(frozen=True)
class Lease:
    """A loaded model held for one request; `load_duration` is 0 unless this request loaded it."""

    loaded: Loaded
    load_duration: int


class Scheduler:
    def __init__(self, settings: Settings, backend: RunnerBackend) -> None:
        self._backend = backend
        self._max_loaded = settings.max_loaded_models or _DEFAULT_MAX_LOADED
        self._max_queue = settings.max_queue
        self._default_keep_alive = parse_keep_alive(settings.keep_alive)
        self._loaded: dict[str, Loaded | _Loading] = {}
        self._cond = asyncio.Condition()
        self._waiting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Models whose runner died while loading them, with the spec and why: not loaded again (into a crash
        # loop) until their files (content-addressed blobs: a new path), template or load options change, or
        # they are removed (`forget`).
        self._crashed: dict[str, tuple[LoadSpec, str]] = {}

    @property
    def waiting(self) -> int:
        """Requests waiting for a model to load now (with those waiting for a slot, bounded by OLLAMA_MAX_QUEUE)."""
        return self._waiting

    @property
    def queued(self) -> int:
        """Requests waiting now: for a model to load, or holding a model whose every slot is taken."""
        return self._waiting + sum(max(0, e.refs - e.spec.runner.num_parallel) for e in self._models())

    def loaded(self) -> list[Loaded]:
        """The loaded models that can serve, longest remaining first (Ollama's /api/ps order).

        A model still loading is left out, and so is one whose runner died (its RPC worker went): that one is
        freed at the next request for it.
        """
        return sorted((e for e in self._models() if e.runner.alive), key=lambda e: -e.expires_at)

    def _models(self) -> list[Loaded]:
        return [e for e in self._loaded.values() if isinstance(e, Loaded)]

    @asynccontextmanager
    async def acquire(self, name: str, spec: LoadSpec, keep_alive: float | None = None) -> AsyncIterator[Lease]:
        """Holds the model loaded (loading it if needed) for the body of the `async with`.

        Raises Busy when OLLAMA_MAX_QUEUE requests wait already: for a model to load, or for a free slot of a
        loaded one (a lease beyond the model's slots waits in its runner).
        """
        if self.queued >= self._max_queue:
            raise Busy()
        keep = self._default_keep_alive if keep_alive is None else keep_alive
        self._waiting += 1
        try:
            lease = await self._acquire(name, spec, keep)
        finally:
            self._waiting -= 1
        try:
            yield lease
        finally:
            await self._release(lease.loaded, keep)

    async def _acquire(self, name: str, spec: LoadSpec, keep_alive: float) -> Lease:
        async with self._cond:
            while True:
                crashed = self._crashed.get(name)
                if crashed is not None and crashed[0] == spec:
                    raise RunnerCrashed(f"{crashed[1]} (not loading it again until the model changes)")
                entry = self._loaded.get(name)
                if isinstance(entry, _Loading):
                    await self._cond.wait()  # until its load ends, one way or the other
                    failure = _failure(entry.task)
                    if failure is not None and entry.spec == spec:
                        raise failure  # the load this request waited for failed: so does this request
                    continue
                if entry is not None and entry.spec == spec and entry.runner.alive:
                    self._hold(entry)
                    return Lease(entry, 0)
                if entry is not None and entry.refs:
                    await self._cond.wait()  # in use with other options: reload once it is free
                    continue
                if any(isinstance(e, _Loading) for e in self._loaded.values()):
                    await self._cond.wait()  # one load at a time: each sees the memory the one before it took
                    continue
                if entry is not None:
                    log.info("reloading %s: %s", name, "load options changed" if entry.runner.alive else
                             "its runner stopped")
                    await self._unload(entry)
                    continue
                if len(self._loaded) >= self._max_loaded:
                    idle = [e for e in self._models() if e.refs == 0]
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
                task = asyncio.create_task(self._load(name, spec))
                self._loaded[name] = _Loading(spec=spec, task=task)
                break
        try:
            entry = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The request left; the load goes on (a thread cannot be stopped) and its model stays, unheld.
            task.add_done_callback(functools.partial(self._abandoned, keep_alive))
            raise
        return Lease(entry, entry.load_duration)

    def _vram_victim(self, spec: LoadSpec) -> Loaded | None:
        """An idle model on the GPU to unload when the new one would not fit there whole, as Ollama does."""
        on_gpu = [e for e in self._models() if e.refs == 0 and e.offload is not None and e.offload.size_vram]
        free = gpu_free_memory()
        if not on_gpu or not free or spec.num_gpu == 0 or spec.offload(free).full:
            return None
        return min(on_gpu, key=lambda e: e.expires_at)

    async def _load(self, name: str, spec: LoadSpec) -> Loaded:
        """Loads in a worker thread, then puts the model in the table in place of its placeholder (or, when the
        load fails, takes the placeholder out) and wakes every waiter.

        The model is published held for the request that asked for it, so no other request can evict it first.
        """
        start = time.monotonic_ns()
        try:
            entry = await asyncio.to_thread(self._open, name, spec)
        except BaseException as exc:
            async with self._cond:
                del self._loaded[name]
                if isinstance(exc, RunnerCrashed):
                    self._crashed[name] = (spec, str(exc))
                self._cond.notify_all()
            raise
        entry.load_duration = time.monotonic_ns() - start
        async with self._cond:
            self._loaded[name] = entry
            self._hold(entry)
            self._cond.notify_all()
        log.info("loaded %s in %.2fs", name, entry.load_duration / 1e9)
        return entry

    def _open(self, name: str, spec: LoadSpec) -> Loaded:
        """The model from the backend. Blocking."""
        opened = self._backend.open(spec)
        return Loaded(name=name, spec=spec, runner=opened.runner, load_duration=0, placement=opened.placement,
                      offload=opened.offload, size=opened.size)

    def _abandoned(self, keep_alive: float, task: asyncio.Task[Loaded]) -> None:
        """Gives back the hold a load took for a request that left before the load ended."""
        if not task.cancelled() and task.exception() is None:
            self._background(self._release(task.result(), keep_alive))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

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
                    entry.timer = loop.call_later(keep_alive, lambda: self._background(self._expire(entry)))
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

    def forget(self, name: str) -> None:
        """Drops what is recorded of a model whose runner crashed at load (it was removed or replaced)."""
        self._crashed.pop(name, None)

    async def unload(self, name: str) -> bool:
        """Unloads a model now if no request holds it (Ollama's keep_alive 0 with no prompt)."""
        async with self._cond:
            entry = self._loaded.get(name)
            if not isinstance(entry, Loaded) or entry.refs:
                return False
            await self._unload(entry)
            self._cond.notify_all()
            return True

    async def close(self) -> None:
        """Unloads every model, then frees the backend; a load in progress is waited for (a thread cannot be
        stopped) and what it made is freed too."""
        async with self._cond:
            while any(isinstance(e, _Loading) for e in self._loaded.values()):
                await self._cond.wait()
            for entry in self._models():
                await self._unload(entry)
        await asyncio.to_thread(self._backend.close)


def _failure(task: asyncio.Task[Loaded]) -> BaseException | None:
    """Why a finished load failed; None while it runs, when it succeeded, or when it was cancelled."""
    if not task.done() or task.cancelled():
        return None
    return task.exception()

