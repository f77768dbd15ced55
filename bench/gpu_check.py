"""GPU proof run (issue 8): discovery, full offload, greedy CPU/GPU agreement,
and single-stream decode speed beside llama-server from the same build.

Not a test: it needs an NVIDIA GPU. Usage:
    python bench/gpu_check.py MODEL.gguf OUT.json [llama-server binary]
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ollama_py import gpu
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.devices import devices
from ollama_py.llama.model import Model, ModelOptions
from ollama_py.llama.oneshot import generate_tokens
from ollama_py.llama.sampler import SamplerChain, SamplerConfig

PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"
N_CTX = 4096


class _Offload(logging.Handler):
    """Catches llama.cpp's "offloaded N/M layers to GPU" line."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "offloaded" in message or "CUDA" in message and "buffer size" in message:
            self.lines.append(message.strip())


def greedy(model: Model, n: int) -> tuple[list[int], float]:
    """Greedy tokens and decode tokens/s (prompt excluded)."""
    with Context(model, ContextOptions(n_ctx=N_CTX, n_batch=512)) as ctx, \
            SamplerChain(model.vocab, SamplerConfig(temperature=0)) as sampler:
        prompt = model.vocab.tokenize(PROMPT, parse_special=True)
        tokens: list[int] = []
        start = 0.0
        for token in generate_tokens(ctx, sampler, prompt, n):
            if not tokens:
                start = time.perf_counter()
            tokens.append(token)
        elapsed = time.perf_counter() - start
        return tokens, (len(tokens) - 1) / elapsed if elapsed > 0 else 0.0


def llama_server_speed(binary: Path, model: Path, n: int) -> dict[str, float]:
    port = 18080
    proc = subprocess.Popen([str(binary), "-m", str(model), "-ngl", "99", "-c", str(N_CTX), "--parallel", "1",
                             "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        body = json.dumps({"prompt": PROMPT, "n_predict": n, "temperature": 0, "ignore_eos": True,
                           "cache_prompt": False}).encode()
        results = []
        for _ in range(3):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body,
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                results.append(json.loads(r.read())["timings"]["predicted_per_second"])
        return {"decode_tokens_per_s": max(results)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    model_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    server = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    logging.basicConfig(level=logging.WARNING)
    catcher = _Offload()
    logging.getLogger("ollama_py.llama.native").addHandler(catcher)
    logging.getLogger("ollama_py.llama.native").setLevel(logging.INFO)

    found = gpu.discover()
    report: dict[str, object] = {
        "gpus": [g.__dict__ for g in found.gpus],
        "reason": found.reason,
        "llama_devices": [[d.name, d.description, d.memory_total] for d in devices()],
        "agreement_problems": gpu.agreement(found, devices()),
    }
    free_before = found.gpus[0].memory_free if found.gpus else 0
    with Model(model_path, ModelOptions(n_gpu_layers=-1)) as on_gpu:
        report["vram_used_by_model_bytes"] = free_before - (gpu.discover().gpus[0].memory_free if found.gpus else 0)
        report["offload_log"] = catcher.lines
        gpu_tokens, _ = greedy(on_gpu, 128)
        speeds = [greedy(on_gpu, 512)[1] for _ in range(3)]
        report["ours_decode_tokens_per_s"] = max(speeds)
    with Model(model_path, ModelOptions(n_gpu_layers=0)) as on_cpu:
        cpu_tokens, cpu_speed = greedy(on_cpu, 128)
        report["ours_cpu_decode_tokens_per_s"] = cpu_speed
    same = 0
    for a, b in zip(gpu_tokens, cpu_tokens):
        if a != b:
            break
        same += 1
    report["greedy_tokens_compared"] = min(len(gpu_tokens), len(cpu_tokens))
    report["greedy_prefix_matching"] = same
    layers = [int(m.group(1)) for line in catcher.lines for m in [re.search(r"offloaded (\d+)/(\d+)", line)] if m]
    report["layers_offloaded"] = layers
    if server is not None:
        theirs = llama_server_speed(server, model_path, 512)
        report["llama_server"] = theirs
        report["single_stream_ratio"] = report["ours_decode_tokens_per_s"] / theirs["decode_tokens_per_s"]
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
