"""FROM a safetensors folder: converted to GGUF in process, checked against the GGUF it was exported from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.model import Model
from ollama_py.llama.oneshot import generate_tokens
from ollama_py.llama.sampler import SamplerChain, SamplerConfig
from ollama_py.store import create, gguf, names
from ollama_py.store.create import CreateError
from ollama_py.store.manifests import MEDIA_MODEL, Store
from ollama_py.store.modelfile import Modelfile
from tests import fixtures_models


def _greedy(path: Path, prompt: str, n: int = 16) -> list[int]:
    with Model(path) as model, Context(model, ContextOptions(n_ctx=256, n_batch=64, n_seq_max=1)) as ctx:
        sampler = SamplerChain(model.vocab, SamplerConfig(temperature=0))
        return list(generate_tokens(ctx, sampler, model.vocab.tokenize(prompt, parse_special=True), n))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, f16_model_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "SmolLM2-135M-Instruct"
    fixtures_models.export_safetensors(f16_model_path, folder)
    return folder


def test_an_exported_model_imports_back_to_the_same_greedy_tokens(exported: Path, f16_model_path: Path,
                                                                  tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    seen: list[str] = []
    name = create.create(store, names.parse("smol-imported"), Modelfile(from_=str(exported)), base_dir=tmp_path,
                         progress=lambda p: seen.append(p.status))
    assert "converting model" in seen and seen[-1] == "success"
    manifest = store.read(name)
    weights = store.blobs.path(manifest.layer(MEDIA_MODEL).digest)
    info = gguf.read(weights)
    assert info.architecture == "llama" and info.file_type == "F16"
    assert info.metadata["tokenizer.ggml.pre"] == "smollm"
    assert store.config(manifest).file_type == "F16"
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert _greedy(weights, prompt) == _greedy(f16_model_path, prompt)


def test_an_unsupported_architecture_is_refused_by_name(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    for part in exported.iterdir():
        (folder / part.name).symlink_to(part)
    (folder / "config.json").unlink()
    config = json.loads((exported / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPTNeoXForCausalLM"]}))
    store = Store(tmp_path / "store")
    with pytest.raises(CreateError, match="unsupported architecture GPTNeoXForCausalLM"):
        create.create(store, names.parse("neox"), Modelfile(from_=str(folder)), base_dir=tmp_path)
    assert store.models() == []
