"""An embedding model end to end: all-MiniLM-L6-v2 imported from safetensors, served by /api/embed and
/v1/embeddings, checked against a numpy forward pass over the same safetensors weights."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import ollama
import openai
import pytest
from safetensors.numpy import load_file

from ollama_py import settings
from ollama_py.store import create, names
from ollama_py.store.manifests import MEDIA_MODEL
from ollama_py.store.modelfile import Modelfile
from tests import fixtures_models
from tests.server_harness import LiveServer

SENTENCES = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.",
             "Embeddings map text to vectors.", "Paris is the capital of France.", "hello world"]
_erf = np.vectorize(math.erf)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def reference_embedding(weights: dict[str, np.ndarray], tokens: list[int], n_head: int = 12) -> np.ndarray:
    """BERT's forward pass, mean pooling and L2 normalisation, as sentence-transformers computes them."""
    t = {k: v.astype(np.float64) for k, v in weights.items()}
    x = t["embeddings.word_embeddings.weight"][tokens] + t["embeddings.position_embeddings.weight"][:len(tokens)] \
        + t["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
    layer = 0
    while f"encoder.layer.{layer}.attention.self.query.weight" in t:
        p = f"encoder.layer.{layer}."

        def dense(name: str, h: np.ndarray) -> np.ndarray:
            return h @ t[p + name + ".weight"].T + t[p + name + ".bias"]  # noqa: B023

        q, k, v = (dense(f"attention.self.{n}", x) for n in ("query", "key", "value"))
        d = x.shape[1] // n_head
        heads = []
        for h in range(n_head):
            s = slice(h * d, (h + 1) * d)
            scores = q[:, s] @ k[:, s].T / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append(scores / scores.sum(-1, keepdims=True) @ v[:, s])
        x = _layer_norm(x + dense("attention.output.dense", np.concatenate(heads, 1)),
                        t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"])
        up = dense("intermediate.dense", x)
        x = _layer_norm(x + dense("output.dense", 0.5 * up * (1 + _erf(up / math.sqrt(2)))),
                        t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"])
        layer += 1
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def minilm(server: LiveServer) -> Path:
    folder = fixtures_models.minilm_folder(settings.load().cache)
    create.create(server.store, names.parse("all-minilm"), Modelfile(from_=str(folder)), base_dir=folder)
    return folder


def _cosine(a: list[float], b: np.ndarray) -> float:
    va = np.asarray(a)
    return float(va @ b / np.linalg.norm(va) / np.linalg.norm(b))


def test_minilm_imported_from_safetensors_embeds_like_its_weights(server: LiveServer, minilm: Path) -> None:
    client = ollama.Client(host=server.url, timeout=300)
    assert client.show("all-minilm").capabilities == ["embedding"]
    assert client.show("all-minilm").details.family == "bert"
    native = client.embed("all-minilm", SENTENCES).embeddings
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    via_openai = [d.embedding for d in openai_client.embeddings.create(model="all-minilm", input=SENTENCES).data]
    weights = load_file(str(minilm / "model.safetensors"))
    with server.client() as http:
        for sentence, got, got_openai in zip(SENTENCES, native, via_openai, strict=True):
            tokens = http.post("/api/tokenize", json={"model": "all-minilm", "text": sentence,
                                                      "add_special": True}).json()["tokens"]
            assert tokens[0] == 101 and tokens[-1] == 102  # [CLS] ... [SEP], as BERT's tokenizer adds them
            expected = reference_embedding(weights, tokens)
            assert len(got) == 384
            assert _cosine(got, expected) > 0.99
            assert _cosine(got_openai, expected) > 0.99


def test_generation_routes_refuse_an_embedding_model_in_ollamas_words(server: LiveServer, minilm: Path) -> None:
    client = ollama.Client(host=server.url, timeout=300)
    for call, route in ((lambda: client.generate("all-minilm", "Hi"), "generate"),
                        (lambda: client.chat("all-minilm", [{"role": "user", "content": "Hi"}]), "chat")):
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert (refused.value.status_code, refused.value.error) == (400, f'"all-minilm" does not support {route}')
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as chat:
        openai_client.chat.completions.create(model="all-minilm", messages=[{"role": "user", "content": "Hi"}])
    assert chat.value.body["message"] == '"all-minilm" does not support chat'  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as completion:
        openai_client.completions.create(model="all-minilm", prompt="Hi")
    assert completion.value.body["message"] == '"all-minilm" does not support generate'  # type: ignore[index]


def test_a_safetensors_model_created_from_uploaded_files_is_the_folders_model(server: LiveServer,
                                                                              minilm: Path) -> None:
    """Ollama's CLI uploads each file of a model folder as a blob and sends `files` {name: digest}; the server
    converts them as it converts the folder itself."""
    files = {}
    with server.client() as http:
        for path in sorted(p for p in minilm.rglob("*") if p.is_file()):
            data = path.read_bytes()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if http.head(f"/api/blobs/{digest}").status_code != 200:
                assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
            files[path.relative_to(minilm).as_posix()] = digest
        created = http.post("/api/create", json={"model": "minilm-uploaded", "files": files, "stream": False})
        assert created.json() == {"status": "success"}
        shown = http.post("/api/show", json={"model": "minilm-uploaded"}).json()
        assert shown["capabilities"] == ["embedding"] and shown["details"]["family"] == "bert"
        without_config = {k: v for k, v in files.items() if k != "config.json"}
        refused = http.post("/api/create", json={"model": "broken", "files": without_config, "stream": False})
        assert refused.status_code == 400 and "config.json" in refused.json()["error"]
    weights = {name: server.store.read(names.parse(name)).layer(MEDIA_MODEL).digest  # type: ignore[union-attr]
               for name in ("minilm-uploaded", "all-minilm")}
    assert weights["minilm-uploaded"] == weights["all-minilm"]
