"""How the scheduler splits models across RPC workers on this machine's loopback (no namespaces needed)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from ollama_py.cluster.probe import WorkerUnavailable, hello
from ollama_py.engine.backend import LoadSpec
from ollama_py.engine.chat import ChatDelta, ChatRequest
from ollama_py.engine.placement import Placement
from ollama_py.engine.runner import RunnerOptions
from ollama_py.engine.scheduler import Scheduler
from ollama_py.engine.types import EngineError, Sampling
from ollama_py.engine.wire import ChatJob, Completion
from ollama_py.server.app import runner_backend
from ollama_py.settings import Settings
from tests.cluster_harness import PROBE, free_port, stop, wait_until, worker_argv
from tests.server_harness import GUARD

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
BASE = Settings(num_parallel=1, context_length=512)


@pytest.fixture(scope="module")
def worker_procs() -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen(worker_argv("127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for port in ports]
    try:
        for port, proc in zip(ports, procs, strict=True):
            wait_until(lambda p=port: hello(f"127.0.0.1:{p}", timeout=PROBE), "worker", proc)  # type: ignore[misc]
        yield {f"127.0.0.1:{port}": proc for port, proc in zip(ports, procs, strict=True)}
    finally:
        stop(procs)


@pytest.fixture
def workers(worker_procs: dict[str, subprocess.Popen[bytes]]) -> tuple[str, str]:
    first, second = worker_procs
    return first, second


def scheduler_for(settings: Settings) -> Scheduler:
    """A scheduler on the runner backend the server would give its engine for these settings."""
    return Scheduler(settings, runner_backend(settings))


def spec(path: Path, num_gpu: int = -1) -> LoadSpec:
    return LoadSpec(path=path, runner=RunnerOptions(num_ctx=512, num_parallel=1, num_thread=1), num_gpu=num_gpu)


def job(name: str, num_predict: int, prompt: str = PROMPT) -> ChatJob:
    """The prompt as it is (raw), answered greedily."""
    return ChatJob(chat=ChatRequest(id=name, messages=(), sampling=Sampling(temperature=0, num_predict=num_predict)),
                   completion=Completion(prompt=prompt, raw=True))


async def answer(scheduler: Scheduler, name: str, load: LoadSpec,
                 num_predict: int = 16) -> tuple[str, tuple[Placement, ...]]:
    async with scheduler.acquire(name, load) as lease:
        async with aclosing(lease.loaded.runner.chat(job(name, num_predict))) as events:  # type: ignore[type-var]
            out = "".join([e.content async for e in events if isinstance(e, ChatDelta)])
        return out, lease.loaded.placement


def test_layers_split_between_this_cpu_and_two_workers_as_told(workers: tuple[str, str], model_path: Path) -> None:
    async def run() -> tuple[str, tuple[Placement, ...], str]:
        split = scheduler_for(dataclasses.replace(BASE, rpc_servers=workers, tensor_split=(1.0, 3.0)))
        local = scheduler_for(BASE)
        try:
            # 20 of the 31 layers leave this machine: a quarter to the first worker, the rest to the second.
            tokens, placement = await answer(split, "m", spec(model_path, num_gpu=20))
            expected, _ = await answer(local, "m", spec(model_path, num_gpu=0))
        finally:
            await split.close()
            await local.close()
        return tokens, placement, expected

    tokens, placement, expected = asyncio.run(run())
    assert placement == (Placement(device="CPU", first_layer=0, last_layer=10),
                         Placement(device="RPC0", endpoint=workers[0], first_layer=11, last_layer=15),
                         Placement(device="RPC1", endpoint=workers[1], first_layer=16, last_layer=30))
    assert tokens == expected


def test_models_share_one_runner_process_and_free_the_workers_when_unloaded(workers: tuple[str, str],
                                                                           model_path: Path) -> None:
    """A worker serves one client at a time: two models in two processes would wait on each other forever.

    Both models answer at once, over and over: ggml-rpc remembers each worker device's last graph without a
    lock and asks the worker to run its stored graph again when that graph comes back; two threads computing
    on one worker at once made one model re-run the other's graph now and then (a third of the runs of this
    test gave two different answers before graphs were always sent whole, llama/devices.py).
    """
    async def run() -> list[tuple[str, str]]:
        scheduler = scheduler_for(dataclasses.replace(BASE, rpc_servers=workers, max_loaded_models=2))
        answers = []
        try:
            for _ in range(3):
                (first, _), (second, _) = await asyncio.gather(answer(scheduler, "a", spec(model_path), 48),
                                                               answer(scheduler, "b", spec(model_path), 48))
                answers.append((first, second))
            assert {e.name for e in scheduler.loaded()} == {"a", "b"}
            with pytest.raises(WorkerUnavailable, match="serving another server"):
                hello(workers[0], timeout=1)  # held by this server's runner process
        finally:
            await scheduler.close()
        return answers

    answers = asyncio.run(run())
    assert all(first == second and first for first, second in answers), answers
    for endpoint in workers:  # the runner process left with the last model: another server may use them now
        hello(endpoint, timeout=GUARD)


@pytest.mark.parametrize("meanwhile", ["another model unloaded", "an embedding asked of it"])
def test_an_answer_on_workers_stays_whole_when_a_buffer_is_freed_meanwhile(
        meanwhile: str, workers: tuple[str, str], model_path: Path) -> None:
    """A worker drops the graphs it stored whenever one of its buffers is freed (a model unloaded; the first
    embedding context of a generation model, closed for one with mean pooling). An answer going on asked it
    to run its stored graph again, found none, the worker hung up, and llama.cpp aborted the runner process
    with every model in it."""
    story = "<|im_start|>user\nWrite a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n"

    async def run() -> tuple[str, str, list[str], int]:
        scheduler = scheduler_for(dataclasses.replace(BASE, rpc_servers=workers, max_loaded_models=2))
        vectors = 0
        try:
            async with scheduler.acquire("b", spec(model_path)):
                pass
            async with scheduler.acquire("a", spec(model_path)) as lease:
                alone = "".join([e.content async for e in lease.loaded.runner.chat(job("a", 48, story))
                                 if isinstance(e, ChatDelta)])
                pieces: list[str] = []
                async with aclosing(lease.loaded.runner.chat(job("a", 48, story))) as events:  # type: ignore[type-var]
                    async for event in events:
                        if isinstance(event, ChatDelta):
                            pieces.append(event.content)
                            if len(pieces) == 8 and meanwhile == "another model unloaded":
                                assert await scheduler.unload("b")
                            elif len(pieces) == 8:
                                vectors = len((await lease.loaded.runner.embed(["a dragon"])).embeddings)
            loaded = sorted(e.name for e in scheduler.loaded())
        finally:
            await scheduler.close()
        return alone, "".join(pieces), loaded, vectors

    alone, beside, loaded, vectors = asyncio.run(run())
    assert beside == alone and len(alone) > 100
    if meanwhile == "another model unloaded":
        assert loaded == ["a"]
    else:
        assert loaded == ["a", "b"] and vectors == 1


def test_a_worker_that_hangs_without_hanging_up_stops_its_answers_after_the_timeout(
        worker_procs: dict[str, subprocess.Popen[bytes]], model_path: Path) -> None:
    """A frozen machine or a cut cable closes no connection: llama.cpp alone would wait forever."""
    endpoints = tuple(worker_procs)
    frozen = worker_procs[endpoints[1]]

    async def healthy_answer_time() -> float:
        """Seconds a whole healthy answer takes on this machine now, under the default timeout."""
        scheduler = scheduler_for(dataclasses.replace(BASE, rpc_servers=endpoints))
        try:
            async with scheduler.acquire("m", spec(model_path)):  # loaded first: a load is not a step
                pass
            started = time.monotonic()
            await answer(scheduler, "m", spec(model_path))
            return time.monotonic() - started
        finally:
            await scheduler.close()

    # The timeout also bounds every healthy step, so it comes from a baseline measured here: a whole answer
    # (prompt and 16 tokens) takes longer than any one of its steps, times a generous factor, with a floor.
    timeout = max(10, math.ceil(5 * asyncio.run(healthy_answer_time())))

    async def run() -> tuple[str, str]:
        scheduler = scheduler_for(dataclasses.replace(BASE, rpc_servers=endpoints, runner_timeout=timeout))
        try:
            async with scheduler.acquire("m", spec(model_path)) as lease:
                with pytest.raises(EngineError) as failure:
                    async with aclosing(lease.loaded.runner.chat(job("r", 400))) as events:  # type: ignore[type-var]
                        async for _ in events:
                            frozen.send_signal(signal.SIGSTOP)
            frozen.send_signal(signal.SIGCONT)
            tokens, _ = await answer(scheduler, "m", spec(model_path))  # a new runner process, the worker back
        finally:
            frozen.send_signal(signal.SIGCONT)
            await scheduler.close()
        return str(failure.value), tokens

    message, tokens = asyncio.run(run())
    assert f"sent nothing for {timeout}s while it had work (OLLAMA_PY_RUNNER_TIMEOUT)" in message
    assert f"RPC worker {endpoints[1]} accepted the connection but did not answer" in message
    assert tokens
