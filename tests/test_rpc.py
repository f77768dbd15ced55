"""RPC workers: an unreachable one is an error, a live one runs the model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ollama_py.llama.devices import add_rpc_server
from ollama_py.llama.lib import LIB_DIR, LlamaError
from tests.server_harness import GUARD

PROMPT = "<|im_start|>user\nList the planets.<|im_end|>\n<|im_start|>assistant\n"

# Runs in a child process, on the worker named first or ("local") on this CPU: registering a worker changes
# device choice for the whole process, and llama.cpp aborts the process if the worker dies later. The local
# run needs a fresh process too, so that attention is ggml's kernel, as on the worker: a runner earlier in
# the test session may have registered ollama-py's in this one (llama/attention.py).
CHILD = """
import json, sys
from ollama_py.llama import attention
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.devices import add_rpc_server
from ollama_py.llama.model import Model, ModelOptions
from ollama_py.llama.oneshot import generate_tokens
from ollama_py.llama.sampler import SamplerChain, SamplerConfig
added = add_rpc_server(sys.argv[1]) if sys.argv[1] != "local" else []
on = tuple(d.handle for d in added)
model = Model(sys.argv[2], ModelOptions(n_gpu_layers=-1, devices=on) if on else ModelOptions(n_gpu_layers=0))
ctx = Context(model, ContextOptions(n_ctx=512))
sampler = SamplerChain(model.vocab, SamplerConfig(temperature=0))
tokens = list(generate_tokens(ctx, sampler, model.vocab.tokenize(sys.argv[3], parse_special=True), 24))
kernel = attention.enable()  # after the answer: whether this process could have used ollama-py's kernel
print(json.dumps({"devices": [[d.name, d.description] for d in added], "tokens": tokens, "kernel": kernel}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def worker() -> Iterator[str]:
    port = _free_port()
    # The worker serves its CPU, so its arithmetic matches the local CPU run
    # even on a machine with a GPU.
    proc = subprocess.Popen([str(LIB_DIR / "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port), "-d", "CPU"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + GUARD
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("ggml-rpc-server exited at start")
                if time.monotonic() > deadline:
                    pytest.fail(f"ggml-rpc-server did not listen in {GUARD:g}s")
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_unreachable_worker_is_an_error_not_an_abort() -> None:
    with pytest.raises(LlamaError, match="unreachable"):
        add_rpc_server(f"127.0.0.1:{_free_port()}")
    with pytest.raises(LlamaError, match="host:port"):
        add_rpc_server("no-port-here")


def run_child(where: str, model_path: Path) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", CHILD, where, str(model_path), PROMPT],
                            capture_output=True, text=True, timeout=GUARD)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_model_on_a_worker_generates_as_locally(worker: str, model_path: Path) -> None:
    remote = run_child(worker, model_path)
    assert remote["devices"] and remote["devices"][0][1] == worker
    # A process with a worker keeps ggml's attention: ollama-py's kernel is refused there (docs/deploy.md).
    assert remote["kernel"] is False
    local = run_child("local", model_path)
    assert not local["devices"] and len(local["tokens"]) == 24 and local["kernel"] is True
    assert remote["tokens"] == local["tokens"]
