"""Beyond one machine, measured: a model split across RPC workers beside the same model local, and three
replicas behind nginx beside one under the same load. The figures and the plot are docs/deploy.md's.

    PYTHONPATH=. python bench/cluster_bench.py OUT.json OUT.png [--sessions 12] [--turns 3] [--repeat 3] [--rounds 2]

Split: two `ollama-py worker`s on loopback (CPU, one thread each) and a server
with OLLAMA_RPC_SERVERS; each configuration is asked the same ~250-token raw
prompt (a different first word each time, so nothing is cached) for 128
greedy tokens, and the server's own counters give prompt and decode speed.
Replicas: `ollama-py serve` x N (4 slots each, one shared store) behind
Debian's nginx with deploy/nginx/ollama-py.conf; SESSIONS chats with their own
X-Session-Id ask TURNS questions each, all chats at once, streaming.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import orjson

from ollama_py import settings
from ollama_py.cluster.probe import hello
from tests.cluster_harness import (
    SERVE,
    free_port,
    nginx_binary,
    nginx_config,
    server_env,
    stop,
    wait_until,
    worker_argv,
)
from tests.server_harness import MODEL, default_store

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PASSAGE = ("The river rises in the hills, runs through farmland and two old towns, and reaches the sea after a "
           "long, slow bend past the salt marshes where the herons wait. ")
SPLIT_CONFIGS = (("local, 1 thread", {"num_gpu": 0, "num_thread": 1}),
                 ("local, 2 threads", {"num_gpu": 0, "num_thread": 2}),
                 ("split over 2 workers", {"num_thread": 1}))


def start_server(address: str, store: Path, cache: Path, **variables: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(SERVE, env=server_env(address, store, cache, **variables), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    wait_until(lambda: httpx.get(f"http://{address}/health", timeout=1).raise_for_status(), "server", proc)
    return proc


def split_vs_local(store: Path, cache: Path, repeat: int) -> list[dict[str, Any]]:
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen(worker_argv("127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for port in ports]
    try:
        for port, proc in zip(ports, procs, strict=True):
            wait_until(lambda p=port: hello(f"127.0.0.1:{p}", timeout=1), "worker", proc)  # type: ignore[misc]
        address = f"127.0.0.1:{free_port()}"
        procs.append(start_server(address, store, cache, OLLAMA_NUM_PARALLEL="1", OLLAMA_CONTEXT_LENGTH="1024",
                                  OLLAMA_RPC_SERVERS=",".join(f"127.0.0.1:{p}" for p in ports)))
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in SPLIT_CONFIGS}
        with httpx.Client(base_url=f"http://{address}", timeout=600) as client:
            for i in range(repeat):  # the configurations take turns, so a change in the machine's load hits each
                for label, options in SPLIT_CONFIGS:
                    generate(client, "Warm up.", options)  # loads the model as this configuration asks
                    runs[label].append(generate(client, f"Run {i}. " + PASSAGE * 7, options))
        rows = [{"config": label, "prompt_tokens": done[0]["prompt_eval_count"],
                 "prompt_tps": [d["prompt_eval_count"] / d["prompt_eval_duration"] * 1e9 for d in done],
                 "decode_tps": [d["eval_count"] / d["eval_duration"] * 1e9 for d in done]}
                for label, done in runs.items()]
        print(rows, flush=True)
        return rows
    finally:
        stop(procs)


def generate(client: httpx.Client, prompt: str, options: dict[str, int]) -> dict[str, Any]:
    answer = client.post("/api/generate", json={"model": MODEL, "prompt": prompt, "raw": True, "stream": False,
                                                "options": {"temperature": 0, "num_predict": 128, **options}})
    answer.raise_for_status()
    return dict(answer.json())


def replicas_behind_nginx(store: Path, cache: Path, replicas: int, sessions: int, turns: int) -> dict[str, Any]:
    procs = []
    try:
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(replicas)]
        for address in addresses:
            procs.append(start_server(address, store, cache, OLLAMA_NUM_PARALLEL="4", OLLAMA_CONTEXT_LENGTH="1024"))
        directory = Path(tempfile.mkdtemp(prefix="nginx-"))
        port = free_port()
        nginx = subprocess.Popen([nginx_binary(), "-p", str(directory), "-c",
                                  str(nginx_config(directory, addresses, port))])
        procs.append(nginx)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/health", timeout=1).raise_for_status(), "nginx", nginx)
        with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=sessions * 2)) as client:
            for address in addresses:  # load the model everywhere first: the load is not what is measured
                httpx.post(f"http://{address}/api/generate", json={"model": MODEL}, timeout=600).raise_for_status()
            start = time.monotonic()
            with ThreadPoolExecutor(sessions) as pool:
                results = [r for chat in pool.map(lambda i: converse(client, f"s{i}", turns), range(sessions))
                           for r in chat]
            wall = time.monotonic() - start
        latencies = sorted(r["latency"] for r in results)
        row = {"replicas": replicas, "requests": len(results), "wall_s": wall, "load": os.getloadavg()[0],
               "output_tps": sum(r["tokens"] for r in results) / wall,
               "latency_p50_s": statistics.median(latencies),
               "latency_p95_s": latencies[int(0.95 * (len(latencies) - 1))],
               "ttft_p50_s": statistics.median(r["ttft"] for r in results)}
        print(row, flush=True)
        return row
    finally:
        stop(procs)


def converse(client: httpx.Client, session: str, turns: int) -> list[dict[str, float]]:
    messages: list[dict[str, str]] = []
    out = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Tell me something about the number {turn + len(session)}."})
        start = time.monotonic()
        ttft, content, tokens = 0.0, [], 0
        body = {"model": MODEL, "messages": messages, "options": {"num_predict": 32}}
        with client.stream("POST", "/api/chat", json=body, headers={"X-Session-Id": session}) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                chunk = orjson.loads(line)
                ttft = ttft or time.monotonic() - start
                content.append(chunk["message"]["content"])
                tokens = chunk.get("eval_count", tokens)
        messages.append({"role": "assistant", "content": "".join(content)})
        out.append({"latency": time.monotonic() - start, "ttft": ttft, "tokens": tokens})
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    fig, (split, scale) = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["split"]
    x = range(len(rows))
    for offset, key, label in ((-0.2, "decode_tps", "decode"), (0.2, "prompt_tps", "prompt")):
        values = [r[key] for r in rows]
        middle = [statistics.median(v) for v in values]
        spread = [[m - min(v) for m, v in zip(middle, values, strict=True)],
                  [max(v) - m for m, v in zip(middle, values, strict=True)]]
        split.bar([i + offset for i in x], middle, width=0.4, label=label, yerr=spread, capsize=3)
    split.set_xticks(list(x), [r["config"] for r in rows])
    split.set(ylabel="tokens/s (one request)", title="SmolLM2-135M: local vs split over RPC workers")
    reps = result["replicas"]
    labels = [f"{r['replicas']} replica{'s' if r['replicas'] > 1 else ''}\n(round {r['round']})" for r in reps]
    scale.bar(labels, [r["output_tps"] for r in reps], color="tab:green", label="output tokens/s")
    twin = scale.twinx()
    twin.plot(labels, [r["latency_p50_s"] for r in reps], "o", color="tab:red", label="p50 latency (s)")
    scale.set(ylabel="aggregate output tokens/s",
              title=f"{result['sessions']} chats x {result['turns']} turns behind nginx")
    twin.set_ylabel("p50 request latency (s)")
    scale.set_ylim(top=max(r["output_tps"] for r in reps) * 1.35)  # room for the legend
    twin.set_ylim(0, max(r["latency_p50_s"] for r in reps) * 1.35)
    split.legend(loc="upper left")
    scale.legend(scale.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0],
                 scale.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1], loc="upper left", ncol=2)
    for ax in (split, scale):
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{result['cores']} CPU cores, load average {result['load_before']:.1f} at the start")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each split configuration")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 1 then 3 replicas")
    args = parser.parse_args()
    cache = settings.load().cache
    store = Path(tempfile.mkdtemp(prefix="bench-store-"))
    default_store(store, cache)
    result: dict[str, Any] = {"cores": os.cpu_count(), "load_before": os.getloadavg()[0],
                              "sessions": args.sessions, "turns": args.turns}
    result["split"] = split_vs_local(store, cache, args.repeat)
    result["replicas"] = [{"round": i + 1, **replicas_behind_nginx(store, cache, n, args.sessions, args.turns)}
                          for i in range(args.rounds) for n in (1, 3)]
    result["load_after"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(result, indent=2))
    plot(result, args.png)


if __name__ == "__main__":
    main()
