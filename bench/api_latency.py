"""Does the HTTP server stay responsive while it generates? Latency of GET /api/tags and /api/ps with N streams running.

Starts `ollama-py serve` on a free loopback port with a fresh store (the
default model is imported on first use), measures the two listing routes while
idle, then again while N streaming /api/generate requests run on N slots, and
writes the percentiles as JSON.

    python bench/api_latency.py OUT.json [--streams 16] [--probes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

MODEL = "smollm2:135m"
ROUTES = ("/api/tags", "/api/ps")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"n": len(ordered), "p50_ms": pick(0.50) * 1e3, "p99_ms": pick(0.99) * 1e3, "max_ms": ordered[-1] * 1e3,
            "mean_ms": statistics.fmean(ordered) * 1e3}


async def probe(session: aiohttp.ClientSession, url: str, count: int, gap: float) -> dict[str, dict[str, float]]:
    """Latency of each listing route, asked `count` times each, `gap` seconds apart."""
    times: dict[str, list[float]] = {route: [] for route in ROUTES}
    for _ in range(count):
        for route in ROUTES:
            start = time.perf_counter()
            async with session.get(url + route) as response:
                await response.read()
                assert response.status == 200, response.status
            times[route].append(time.perf_counter() - start)
        await asyncio.sleep(gap)
    return {route: percentiles(samples) for route, samples in times.items()}


async def stream(session: aiohttp.ClientSession, url: str, seed: int, chunks: list[int],
                 stop: asyncio.Event) -> None:
    """One streaming generation, asked again whenever it ends, until `stop`; counts its chunks in chunks[seed]."""
    while not stop.is_set():
        body = {"model": MODEL, "prompt": f"Write a long story about the number {seed}.",
                "options": {"num_predict": 400, "seed": seed, "temperature": 1.0}}
        async with session.post(url + "/api/generate", json=body) as response:
            async for _ in response.content:
                chunks[seed] += 1
                if stop.is_set():
                    break


async def measure(url: str, streams: int, probes: int) -> dict[str, object]:
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(600):  # the server starts, then imports and loads the model
            try:
                async with session.post(url + "/api/generate", json={"model": MODEL, "prompt": ""}) as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.5)
        idle = await probe(session, url, probes, 0.01)
        stop = asyncio.Event()
        chunks = [0] * streams
        workers = [asyncio.create_task(stream(session, url, seed, chunks, stop)) for seed in range(streams)]
        while not all(chunks):  # every stream admitted and generating
            await asyncio.sleep(0.1)
        before, start = sum(chunks), time.perf_counter()
        busy = await probe(session, url, probes, 0.02)
        rate = (sum(chunks) - before) / (time.perf_counter() - start)
        stop.set()
        await asyncio.gather(*workers)
    return {"streams": streams, "idle": idle, "while_streaming": busy, "chunks_per_second_while_probing": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": store,
               "OLLAMA_NUM_PARALLEL": str(args.streams), "OLLAMA_CONTEXT_LENGTH": "512"}
        server = subprocess.Popen([sys.executable, "-m", "ollama_py.cli.main", "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            result = asyncio.run(measure(f"http://127.0.0.1:{port}", args.streams, args.probes))
        finally:
            server.terminate()
            server.wait(60)
    result["cpu_count"] = os.cpu_count()
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
