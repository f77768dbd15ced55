"""The scheduler of loaded models, on the real model file loaded under several names."""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path

import pytest

from ollama_py.engine.backend import LoadSpec
from ollama_py.engine.chat import ChatDone, ChatRequest
from ollama_py.engine.runner import RunnerOptions
from ollama_py.engine.scheduler import Busy, Scheduler, parse_keep_alive
from ollama_py.engine.supervisor import ProcessBackend
from ollama_py.engine.types import Sampling
from ollama_py.engine.wire import ChatJob
from ollama_py.settings import Settings

SMALL = RunnerOptions(num_ctx=256, num_parallel=1, num_batch=64)


def make(max_loaded: int = 2, max_queue: int = 8) -> Scheduler:
    settings = Settings(max_loaded_models=max_loaded, max_queue=max_queue, keep_alive="5m")
    return Scheduler(settings, ProcessBackend(settings))


def names(scheduler: Scheduler) -> set[str]:
    return {entry.name for entry in scheduler.loaded()}


def test_keep_alive_values() -> None:
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive("250ms") == 0.25
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive("-1") == math.inf
    assert parse_keep_alive(-1) == math.inf
    with pytest.raises(ValueError):
        parse_keep_alive("soon")


@pytest.mark.asyncio
async def test_two_models_side_by_side_then_keep_alive_zero_unloads(model_path: Path) -> None:
    scheduler = make()
    spec = LoadSpec(path=model_path, runner=SMALL)
    try:
        async with scheduler.acquire("a", spec) as a, scheduler.acquire("b", spec) as b:
            assert names(scheduler) == {"a", "b"}
            assert a.load_duration > 0 and a.loaded is not b.loaded
            assert a.loaded.runner.pid != b.loaded.runner.pid  # each model in a runner process of its own
            assert await a.loaded.runner.tokenize("Hello", add_special=False) == \
                await b.loaded.runner.tokenize("Hello", add_special=False)
            job = ChatJob(chat=ChatRequest(id="x", messages=({"role": "user", "content": "Hello"},),
                                           sampling=Sampling(temperature=0, num_predict=3)))
            async with contextlib.aclosing(b.loaded.runner.chat(job)) as events:
                done = [e async for e in events if isinstance(e, ChatDone)]
            assert done[0].done.eval_count == 3
        assert names(scheduler) == {"a", "b"}  # kept for the default keep_alive
        async with scheduler.acquire("a", spec, keep_alive=0) as again:
            assert again.load_duration == 0  # already loaded
        assert names(scheduler) == {"b"}
    finally:
        await scheduler.close()
    assert names(scheduler) == set()


@pytest.mark.asyncio
async def test_too_many_models_evicts_the_one_expiring_soonest(model_path: Path) -> None:
    scheduler = make(max_loaded=2)
    spec = LoadSpec(path=model_path, runner=SMALL)
    try:
        async with scheduler.acquire("long", spec, keep_alive=3600):
            pass
        async with scheduler.acquire("short", spec, keep_alive=600):
            pass
        async with scheduler.acquire("new", spec):
            assert names(scheduler) == {"long", "new"}
    finally:
        await scheduler.close()


@pytest.mark.asyncio
async def test_full_queue_is_busy(model_path: Path) -> None:
    scheduler = make(max_loaded=1, max_queue=1)
    spec = LoadSpec(path=model_path, runner=SMALL)
    try:
        async with scheduler.acquire("a", spec):
            # "b" must wait for "a" to be released; it takes the one queue place.
            queued = scheduler.acquire("b", spec, keep_alive=0)
            waiting = asyncio.ensure_future(queued.__aenter__())
            while scheduler.waiting == 0:
                await asyncio.sleep(0)
            with pytest.raises(Busy, match="server busy"):
                async with scheduler.acquire("c", spec):
                    pass
            assert not waiting.done()
        lease = await waiting
        assert lease.loaded.name == "b" and names(scheduler) == {"b"}
        await queued.__aexit__(None, None, None)
        assert names(scheduler) == set()
    finally:
        await scheduler.close()


@pytest.mark.asyncio
async def test_changed_num_ctx_reloads_and_unchanged_does_not(model_path: Path) -> None:
    scheduler = make()
    spec = LoadSpec(path=model_path, runner=SMALL)
    try:
        async with scheduler.acquire("a", spec) as first:
            runner = first.loaded.runner
        async with scheduler.acquire("a", LoadSpec(path=model_path, runner=SMALL)) as same:
            assert same.loaded.runner is runner and same.load_duration == 0
        bigger = LoadSpec(path=model_path, runner=RunnerOptions(num_ctx=512, num_parallel=1, num_batch=64))
        async with scheduler.acquire("a", bigger) as reloaded:
            assert reloaded.loaded.runner is not runner and reloaded.load_duration > 0
            assert reloaded.loaded.runner.num_ctx == 512
            assert not runner.alive
        assert names(scheduler) == {"a"}
    finally:
        await scheduler.close()


@pytest.mark.asyncio
async def test_embeddings_through_a_lease(model_path: Path) -> None:
    scheduler = make()
    try:
        async with scheduler.acquire("e", LoadSpec(path=model_path, runner=SMALL)) as lease:
            result = await lease.loaded.runner.embed(["hello", "world"])
        assert len(result.embeddings) == 2
    finally:
        await scheduler.close()
