"""Loads run outside the scheduler's lock: a slow load never delays a model already loaded.

A load is made slow by a backend that wraps the real one (the real llama.cpp
load, in a runner process, still happens) and holds loads of one spec at a gate until the
test opens it. Nothing here is timed: the gate orders the events, and GUARD
only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ollama_py import settings
from ollama_py.engine.backend import LoadSpec, Opened
from ollama_py.engine.runner import RunnerOptions
from ollama_py.engine.scheduler import Lease, Scheduler
from ollama_py.engine.supervisor import ProcessBackend
from ollama_py.server.app import make_app
from ollama_py.settings import Settings
from tests.server_harness import GUARD, MODEL, default_store, server_settings

SMALL = RunnerOptions(num_ctx=256, num_parallel=1, num_batch=64)
SLOW_NUM_CTX = 512  # the slow model's context: the server's default is 1024, so its spec differs from the default's


class GatedBackend:
    """The real backend, except that a load of a spec `slow` picks waits at a gate until the test opens it."""

    def __init__(self, slow: Callable[[LoadSpec], bool]) -> None:
        self._local = ProcessBackend(Settings())
        self._slow = slow
        self.entered = threading.Event()  # a slow load has begun
        self.gate = threading.Event()
        self.opens = 0  # loads begun, slow or not

    def open(self, spec: LoadSpec) -> Opened:
        self.opens += 1
        if self._slow(spec):
            self.entered.set()
            if not self.gate.wait(GUARD):
                raise AssertionError(f"the test never opened the gate in {GUARD:g}s")
        return self._local.open(spec)

    @property
    def failures(self) -> int:
        return self._local.failures

    def close(self) -> None:
        self._local.close()


async def entered(backend: GatedBackend) -> None:
    """Returns once a slow load waits at the gate."""
    assert await asyncio.to_thread(backend.entered.wait, GUARD), "the slow load never began"


async def generate(client: TestClient, model: str) -> dict[str, Any]:
    response = await client.post("/api/generate", json={"model": model, "prompt": "Name a colour.", "stream": False,
                                                        "options": {"temperature": 0, "num_predict": 8}})
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


@pytest.mark.asyncio
async def test_a_loaded_model_answers_while_another_model_loads(aiohttp_client: Any, tmp_path: Path) -> None:
    cache = settings.load().cache
    backend = GatedBackend(lambda spec: spec.runner.num_ctx == SLOW_NUM_CTX)
    app = make_app(server_settings(tmp_path, cache), store=default_store(tmp_path, cache), backend=backend)
    client: TestClient = await aiohttp_client(app)
    try:
        created = await client.post("/api/create", json={"model": "slow", "from": MODEL, "stream": False,
                                                         "parameters": {"num_ctx": SLOW_NUM_CTX}})
        assert created.status == 200, await created.text()
        await generate(client, MODEL)  # loaded before the slow load begins

        slow = asyncio.create_task(generate(client, "slow"))
        await entered(backend)
        answer = await asyncio.wait_for(generate(client, MODEL), GUARD)
        assert answer["done"] and answer["response"] and answer["eval_count"] > 0
        assert not slow.done()  # the slow model's request waits for its load, which is still at the gate
        listed = await (await client.get("/api/ps")).json()
        assert [m["name"] for m in listed["models"]] == [MODEL]  # a model still loading is not listed
    finally:
        backend.gate.set()  # the app's cleanup waits for a load in progress
    late = await asyncio.wait_for(slow, GUARD)
    assert late["done"] and late["response"] and late["load_duration"] > 0
    assert backend.opens == 2


@pytest.mark.asyncio
async def test_requests_for_a_loading_model_share_its_one_load(model_path: Path) -> None:
    backend = GatedBackend(lambda spec: True)
    scheduler = Scheduler(Settings(max_loaded_models=2, keep_alive="5m"), backend)
    spec = LoadSpec(path=model_path, runner=SMALL)

    async def hold() -> Lease:
        async with scheduler.acquire("b", spec) as lease:
            return lease

    try:
        first = asyncio.create_task(hold())
        await entered(backend)
        second = asyncio.create_task(hold())
        while scheduler.waiting < 2:  # both wait: one for its load, one for that same load
            await asyncio.sleep(0)
        backend.gate.set()
        leases = await asyncio.wait_for(asyncio.gather(first, second), GUARD)
        assert leases[0].loaded is leases[1].loaded
        assert sorted(lease.load_duration > 0 for lease in leases) == [False, True]  # only the loader reports it
        assert backend.opens == 1
    finally:
        backend.gate.set()
        await scheduler.close()


@pytest.mark.asyncio
async def test_a_failed_load_fails_the_requests_that_waited_for_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 60)  # a header and nothing after it: the real load fails
    backend = GatedBackend(lambda spec: True)
    scheduler = Scheduler(Settings(max_loaded_models=2, keep_alive="5m"), backend)
    spec = LoadSpec(path=broken, runner=SMALL)

    async def hold() -> None:
        async with scheduler.acquire("broken", spec):
            pass

    try:
        first = asyncio.create_task(hold())
        await entered(backend)
        second = asyncio.create_task(hold())
        while scheduler.waiting < 2:
            await asyncio.sleep(0)
        backend.gate.set()
        failures = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), GUARD)
        assert all(isinstance(f, Exception) for f in failures), failures
        assert failures[0] is failures[1]  # the one load's error, not a second attempt
        assert backend.opens == 1 and scheduler.loaded() == []
        with pytest.raises(type(failures[0])):  # a later request tries again
            await asyncio.wait_for(hold(), GUARD)
        assert backend.opens == 2
    finally:
        backend.gate.set()
        await scheduler.close()


@pytest.mark.asyncio
async def test_a_request_that_leaves_during_its_load_leaves_the_model_loaded(model_path: Path) -> None:
    backend = GatedBackend(lambda spec: True)
    scheduler = Scheduler(Settings(max_loaded_models=2, keep_alive="5m"), backend)
    spec = LoadSpec(path=model_path, runner=SMALL)

    async def hold() -> None:
        async with scheduler.acquire("b", spec):
            pass

    try:
        gone = asyncio.create_task(hold())
        await entered(backend)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        backend.gate.set()
        async with scheduler.acquire("b", spec) as lease:  # waits for the load the first request began
            assert lease.load_duration == 0
        assert backend.opens == 1

        async def idle() -> None:
            while [e.refs for e in scheduler.loaded()] != [0]:  # the one who left gave its hold back too
                await asyncio.sleep(0.01)

        await asyncio.wait_for(idle(), GUARD)
    finally:
        backend.gate.set()
        await scheduler.close()
