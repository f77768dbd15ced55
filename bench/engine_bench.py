"""Our engine beside llama-server, built from the same pinned source and flags.

Measures, on the same prompts, greedy, with the same threads, context per
slot and flash attention: single-stream decode tokens/s, aggregate tokens/s
at several concurrent streams (each side with as many slots as streams), and
time to first token. llama-server is driven over HTTP with streaming; our
engine in-process, which is what the HTTP layer calls.

    python bench/engine_bench.py MODEL.gguf LLAMA_SERVER OUT.json [--streams 1,4,8,16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import Done, GenerationRequest, Sampling, Token
from ollama_py.llama.model import Model, ModelOptions

TOPICS = ["a lighthouse keeper", "the history of tea", "how volcanoes form", "a robot learning to paint",
          "the rules of chess", "a trip to Mars", "why the sea is salty", "a day in ancient Rome",
          "how bees make honey", "the life of a star", "a haunted library", "building a treehouse",
          "the water cycle", "a detective in Paris", "how bridges stand up", "a dragon who hates fire"]
NUM_CTX = 2048
N_PREDICT = 128


@dataclass
class Run:
    streams: int
    tokens: int
    wall_s: float
    ttft_ms: list[float]
    decode_tps: list[float]  # per stream, first token to last

    @property
    def aggregate_tps(self) -> float:
        return self.tokens / self.wall_s


def prompt(i: int) -> str:
    return f"<|im_start|>user\nWrite about {TOPICS[i % len(TOPICS)]}.<|im_end|>\n<|im_start|>assistant\n"


async def ours_one(runner: Runner, model: Model, i: int) -> tuple[int, float, float]:
    start = time.perf_counter()
    first = last = 0.0
    count = 0
    request = GenerationRequest(id=f"b{i}-{start}", prompt=tuple(model.vocab.tokenize(prompt(i), parse_special=True)),
                                sampling=Sampling(temperature=0, num_predict=N_PREDICT, repeat_penalty=1.0))
    async with contextlib.aclosing(runner.submit(request)) as events:
        async for event in events:
            if isinstance(event, Token):
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
            elif isinstance(event, Done):
                break
    return count, (first - start) * 1000, (count - 1) / (last - first) if count > 1 else 0.0


async def server_one(session: aiohttp.ClientSession, url: str, i: int) -> tuple[int, float, float]:
    body = {"prompt": prompt(i), "n_predict": N_PREDICT, "temperature": 0, "stream": True, "cache_prompt": True}
    start = time.perf_counter()
    first = last = 0.0
    count = 0
    async with session.post(f"{url}/completion", json=body) as resp:
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("stop"):
                break
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
    return count, (first - start) * 1000, (count - 1) / (last - first) if count > 1 else 0.0


async def level(one: Callable[[int], Awaitable[tuple[int, float, float]]], streams: int, rounds: int) -> Run:
    best: Run | None = None
    for r in range(rounds):
        start = time.perf_counter()
        results = await asyncio.gather(*(one(r * streams + i) for i in range(streams)))
        run = Run(streams, sum(n for n, _, _ in results), time.perf_counter() - start,
                  [t for _, t, _ in results], [d for _, _, d in results])
        if best is None or run.aggregate_tps > best.aggregate_tps:
            best = run
    assert best is not None
    return best


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench_server(binary: Path, model: Path, streams: int, threads: int, ngl: int, rounds: int) -> Run:
    port = free_port()
    proc = subprocess.Popen([str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                             "-c", str(NUM_CTX * streams), "--parallel", str(streams), "-t", str(threads),
                             "-tb", str(threads), "-fa", "on", "-ngl", str(ngl), "-b", "512", "-ub", "512",
                             "--no-warmup"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            await server_one(session, url, 99)  # warm-up
            return await level(lambda i: server_one(session, url, i), streams, rounds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def bench_ours(model: Model, streams: int, threads: int, rounds: int) -> Run:
    options = RunnerOptions(num_ctx=NUM_CTX, num_parallel=streams, num_batch=512, num_thread=threads,
                            flash_attention="on")
    with Runner(model, options) as runner:
        await ours_one(runner, model, 99)  # warm-up
        return await level(lambda i: ours_one(runner, model, i), streams, rounds)


def summary(run: Run) -> dict[str, float]:
    return {"aggregate_tps": run.aggregate_tps, "decode_tps_median": statistics.median(run.decode_tps),
            "ttft_ms_median": statistics.median(run.ttft_ms), "tokens": run.tokens}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("llama_server", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--streams", default="1,4,8,16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ngl", type=int, default=0, help="layers on the GPU, for both sides")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = Model(args.model, ModelOptions(n_gpu_layers=args.ngl))
    results = []
    for streams in (int(s) for s in args.streams.split(",")):
        theirs = summary(await bench_server(args.llama_server, args.model, streams, args.threads, args.ngl,
                                            args.rounds))
        ours = summary(await bench_ours(model, streams, args.threads, args.rounds))
        row = {"streams": streams, "ours": ours, "llama_server": theirs,
               "aggregate_ratio": ours["aggregate_tps"] / theirs["aggregate_tps"],
               "decode_ratio": ours["decode_tps_median"] / theirs["decode_tps_median"],
               "ttft_ratio": ours["ttft_ms_median"] / theirs["ttft_ms_median"]}
        print(json.dumps(row), flush=True)
        results.append(row)
    args.out.write_text(json.dumps({"threads": args.threads, "ngl": args.ngl, "num_ctx": NUM_CTX,
                                    "n_predict": N_PREDICT, "results": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
