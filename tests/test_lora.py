"""LoRA adapters: the binding applies them with their scale; a Modelfile ADAPTER makes another loaded model.

The adapter is random (tests/fixtures_models.py): its answers mean nothing, but
greedy output shows whether it was applied.
"""

from __future__ import annotations

from pathlib import Path

import ollama
import pytest

from ollama_py import settings
from ollama_py.llama.adapter import LoraAdapter
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.model import Model
from ollama_py.llama.oneshot import generate_tokens
from ollama_py.llama.sampler import SamplerChain, SamplerConfig
from tests import fixtures_models
from tests.server_harness import MODEL, LiveServer

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def lora_path() -> Path:
    return fixtures_models.lora_adapter(settings.load().cache)


def _greedy(model: Model, n: int = 12) -> list[int]:
    with Context(model, ContextOptions(n_ctx=256, n_batch=64, n_seq_max=1)) as ctx:
        sampler = SamplerChain(model.vocab, SamplerConfig(temperature=0))
        return list(generate_tokens(ctx, sampler, model.vocab.tokenize(PROMPT), n))


def test_the_adapter_changes_greedy_output_and_scale_zero_does_not(model_path: Path, lora_path: Path) -> None:
    with Model(model_path) as base:
        plain = _greedy(base)
    with Model(model_path, adapters=(lora_path,)) as adapted:
        assert [a.path for a in adapted.adapters] == [lora_path]
        with_adapter = _greedy(adapted)
        adapted.adapters = [LoraAdapter(adapted, lora_path, scale=0.0)]
        at_scale_zero = _greedy(adapted)
    assert with_adapter != plain
    assert at_scale_zero == plain


def test_an_adapter_for_another_shape_fails_the_load(model_path: Path) -> None:
    wrong = fixtures_models.mismatched_lora_adapters(settings.load().cache)["shape"]
    with pytest.raises(Exception, match="could not load the LoRA adapter"):
        Model(model_path, adapters=(wrong,))


def test_an_adapter_in_a_modelfile_is_another_loaded_model(server: LiveServer, lora_path: Path) -> None:
    client = ollama.Client(host=server.url, timeout=300)
    adapter = client.create_blob(lora_path)
    updates = list(client.create("smol-lora", from_=MODEL, adapters={"lora.gguf": adapter}, stream=True))
    assert updates[-1].status == "success"
    options = {"num_predict": 8, "temperature": 0, "seed": 1}
    base = client.generate(MODEL, PROMPT, raw=True, options=options).response
    adapted = client.generate("smol-lora", PROMPT, raw=True, options=options).response
    assert adapted != base
    assert {m.model for m in client.ps().models} >= {MODEL, "smol-lora:latest"}
    assert "ADAPTER " in (client.show("smol-lora").modelfile or "")
    assert client.generate(MODEL, PROMPT, raw=True, options=options).response == base
    client.delete("smol-lora")


@pytest.mark.parametrize("kind", ["shape", "architecture"])
def test_a_mismatched_adapter_is_refused_at_create(server: LiveServer, kind: str) -> None:
    client = ollama.Client(host=server.url, timeout=300)
    wrong = fixtures_models.mismatched_lora_adapters(settings.load().cache)[kind]
    with pytest.raises(ollama.ResponseError) as refused:
        client.create(f"smol-bad-{kind}", from_=MODEL, adapters={"bad.gguf": client.create_blob(wrong)})
    assert refused.value.status_code == 400
    assert {"shape": "does not fit", "architecture": "built for the qwen2 architecture"}[kind] in refused.value.error
    assert f"smol-bad-{kind}:latest" not in {m.model for m in client.list().models}
