"""Quantize on create (`/api/create` `quantize`, `ollama-py create -q`) through the real ollama client.

The source is the default model dequantized to F16 (tests/fixtures_models.py); the
reference for each result is llama.cpp's quantizer run directly on that file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import ollama
import pytest

from ollama_py.llama import quantize
from ollama_py.store import gguf, names
from tests.server_harness import MODEL, LiveServer


@pytest.fixture(scope="module")
def client(server: LiveServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=300)


@pytest.fixture(scope="module")
def f16_blob(client: ollama.Client, f16_model_path: Path) -> str:
    return client.create_blob(f16_model_path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@pytest.mark.parametrize("level", ["q4_K_M", "q8_0"])
def test_an_f16_model_quantized_on_create_loads_and_answers(client: ollama.Client, server: LiveServer, f16_blob: str,
                                                            f16_model_path: Path, tmp_path: Path, level: str) -> None:
    name = f"smol-{level.lower()}"
    updates = list(client.create(name, files={"smol-f16.gguf": f16_blob}, quantize=level, stream=True))
    status = f"quantizing F16 model to {level.upper()}"
    bars = [u for u in updates if u.status == status]
    assert bars and bars[-1].completed == bars[-1].total == f16_model_path.stat().st_size
    assert [u.status for u in updates][-1] == "success"

    shown = client.show(name)
    assert shown.details.quantization_level == level.upper()
    # The stored weights are exactly what llama.cpp's quantizer makes of the F16 file.
    reference = tmp_path / "reference.gguf"
    quantize.quantize(f16_model_path, reference, quantize.file_type(level))
    stored = server.store.read(names.parse(name))
    [weights] = [layer for layer in stored.layers if layer.media_type.endswith(".model")]
    assert weights.size == reference.stat().st_size < f16_model_path.stat().st_size
    assert weights.digest == _sha256(reference)
    assert gguf.read(server.store.blobs.path(weights.digest)).file_type == level.upper()

    answer = client.generate(name, "The capital of France is", options={"num_predict": 4, "temperature": 0})
    assert answer.eval_count == 4 and answer.response.strip()
    client.delete(name)


def test_quantizing_an_already_quantized_model_is_refused(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.create("requantized", from_=MODEL, quantize="q4_K_M")
    assert refused.value.status_code == 400
    assert refused.value.error == "quantization is only supported for F16 and F32 models"
    assert "requantized:latest" not in {m.model for m in client.list().models}


def test_an_unknown_quantization_type_is_refused(client: ollama.Client, f16_blob: str) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.create("oddly-quantized", files={"smol-f16.gguf": f16_blob}, quantize="q9_Z")
    assert refused.value.status_code == 400 and refused.value.error == "unsupported quantization type Q9_Z"
