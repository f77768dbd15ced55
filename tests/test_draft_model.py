"""A draft model named in the Modelfile (DRAFT): the same greedy tokens, in fewer steps; a draft whose
vocabulary differs is refused at create and at load; `show --modelfile` prints the DRAFT back.

The default model drafts for itself: with greedy sampling it proposes exactly
what the target would sample, so every draft is taken, and the test can ask
for far fewer steps than tokens without depending on how well a small model
guesses a big one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from ollama_py import settings
from ollama_py.cli import models as cli_models
from ollama_py.cli.client import BaseURL, Client, ResponseError
from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import GenerationRequest, Sampling
from ollama_py.llama.model import Model
from ollama_py.store import create, modelfile, names
from ollama_py.store.create import CreateError
from ollama_py.store.manifests import Store
from ollama_py.store.modelfile import Modelfile
from tests import fixtures_models, hostile_models
from tests.runner_harness import collect
from tests.server_harness import LiveServer

OPTIONS = RunnerOptions(num_ctx=1024, num_parallel=2, num_batch=128, cache_ram=0)
QUESTIONS = ("Why is the sky blue? Explain it to a child.", "Write a short poem about a cat and a mouse.",
             "Why is the sky blue? Explain it to a physicist.")


def prompt(model: Model, question: str) -> tuple[int, ...]:
    return tuple(model.vocab.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                                      parse_special=True))


def request(model: Model, question: str, n: int, **extra: object) -> GenerationRequest:
    return GenerationRequest(id="q", prompt=prompt(model, question),
                             sampling=Sampling(temperature=0, num_predict=n), **extra)  # type: ignore[arg-type]


def other_vocabulary(model_path: Path) -> Path:
    """The default model with one ordinary token's text changed: it loads, and its ids mean other text."""
    out = settings.load().cache / "test-fixtures" / "draft-other-vocab.gguf"
    if not out.exists():
        tokens = list(hostile_models.read_value(model_path, "tokenizer.ggml.tokens"))  # type: ignore[arg-type]
        tokens[300] = "<not-in-the-target>"
        partial = out.with_suffix(".partial")
        hostile_models.rewrite(model_path, partial, {"tokenizer.ggml.tokens": hostile_models.strings(tokens)})
        partial.replace(out)
    return out


@pytest.fixture(scope="module")
def plain(model: Model) -> Iterator[Runner]:
    with Runner(model, msgspec.structs.replace(OPTIONS, draft_max=0)) as runner:
        yield runner


@pytest.fixture(scope="module")
def drafted(model: Model) -> Iterator[Runner]:
    with Runner(model, OPTIONS, draft=model) as runner:
        yield runner


def test_self_drafting_gives_the_same_tokens_and_logprobs_in_far_fewer_steps(model: Model, plain: Runner,
                                                                            drafted: Runner) -> None:
    asked = request(model, QUESTIONS[0], 40, logprobs=True, top_logprobs=2)
    expected = asyncio.run(collect(plain, asked))
    steps, accepted = drafted.steps, drafted.stats().accepted
    got = asyncio.run(collect(drafted, asked))
    assert got[0] == expected[0] and len(got[0]) == 40
    assert got[1] == expected[1]
    assert got[2] == expected[2]
    assert str(got[3].reason) == str(expected[3].reason) == "length"
    accepted = drafted.stats().accepted - accepted
    steps = drafted.steps - steps
    # The prompt's prefill is one step; a greedy model drafting for itself is right on every token.
    assert accepted >= 30, f"only {accepted} drafted tokens taken"
    assert steps <= 1 + 40 - accepted
    assert steps <= 12, f"{steps} steps for 40 tokens"


def test_concurrent_and_follow_up_requests_stay_identical(model: Model, plain: Runner, drafted: Runner) -> None:
    """Two slots drafting at once, then a request sharing a prefix with what a slot's draft sequence holds
    (its draft KV is cut back to the common prefix, not reused whole), and num_predict ending inside a draft."""
    async def both(runner: Runner, asked: list[GenerationRequest]) -> list[tuple]:
        return list(await asyncio.gather(*(collect(runner, r) for r in asked)))

    first = [request(model, QUESTIONS[0], 24), request(model, QUESTIONS[1], 24)]
    then = [request(model, QUESTIONS[2], 24), request(model, QUESTIONS[1], 5)]
    for asked in (first, then):
        expected = asyncio.run(both(plain, asked))
        got = asyncio.run(both(drafted, asked))
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert [g[3].eval_count for g in got] == [e[3].eval_count for e in expected]
    assert drafted.stats().accepted > 0


def test_a_draft_with_another_vocabulary_is_refused_at_load(model: Model, model_path: Path) -> None:
    with (Model(other_vocabulary(model_path)) as other,
          pytest.raises(ValueError, match="vocabularies differ: token 300")):
        Runner(model, OPTIONS, draft=other)


# ---- through the server: create, show, generate -------------------------------------------------------------


def upload(http: httpx.Client, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    return digest


def test_create_with_a_draft_show_it_and_generate_the_same_text(http: httpx.Client) -> None:
    created = http.post("/api/create", json={"model": "drafted", "from": "smollm2:135m", "draft": "smollm2:135m",
                                             "stream": False})
    assert created.status_code == 200, created.text
    shown = http.post("/api/show", json={"model": "drafted"}).json()["modelfile"]
    parsed = modelfile.parse(shown)
    assert parsed.draft is not None and Path(parsed.draft).name.startswith("sha256-")
    assert f"DRAFT {parsed.draft}\n" in shown
    # The Modelfile `show` printed builds the same model again: its DRAFT is the blob, a GGUF path.
    again = http.post("/api/create", json={"model": "drafted-again", "from": "drafted", "stream": False})
    assert again.status_code == 200, again.text
    assert modelfile.parse(http.post("/api/show", json={"model": "drafted-again"}).json()["modelfile"]).draft \
        == parsed.draft
    body = {"prompt": QUESTIONS[1], "stream": False, "options": {"temperature": 0, "num_predict": 24}}
    expected = http.post("/api/generate", json={**body, "model": "smollm2:135m"}).json()
    got = http.post("/api/generate", json={**body, "model": "drafted"}).json()
    assert got["response"] == expected["response"] and got["eval_count"] == 24
    sizes = {m["name"]: m["size"] for m in http.get("/api/ps").json()["models"]}
    assert sizes["drafted:latest"] > sizes["smollm2:135m"]  # the draft's weights count in what the model takes


def test_cli_create_uploads_a_draft_file_and_refuses_another_vocabulary(http: httpx.Client, server: LiveServer,
                                                                       model_path: Path, tmp_path: Path) -> None:
    client = Client(BaseURL.parse(server.url))
    (tmp_path / "draft.gguf").symlink_to(model_path)
    (tmp_path / "other.gguf").symlink_to(other_vocabulary(model_path))
    cli_models.create(client, "via-cli", modelfile.parse("FROM smollm2:135m\nDRAFT ./draft.gguf\n"), tmp_path)
    shown = modelfile.parse(http.post("/api/show", json={"model": "via-cli"}).json()["modelfile"])
    assert shown.draft is not None and Path(shown.draft).read_bytes()[:4] == b"GGUF"
    with pytest.raises(ResponseError, match="DRAFT .*vocabularies differ"):
        cli_models.create(client, "via-cli-other", modelfile.parse("FROM smollm2:135m\nDRAFT other.gguf\n"),
                          tmp_path)


def test_create_refuses_a_draft_with_another_vocabulary(http: httpx.Client, model_path: Path) -> None:
    digest = upload(http, other_vocabulary(model_path))
    refused = http.post("/api/create", json={"model": "mismatched", "from": "smollm2:135m",
                                              "draft_files": {"other.gguf": digest}, "stream": False})
    assert refused.status_code == 400
    assert "vocabularies differ" in refused.json()["error"] and "token 300" in refused.json()["error"]
    assert http.post("/api/show", json={"model": "mismatched"}).status_code == 404


def test_create_refuses_a_draft_that_is_no_model(http: httpx.Client, tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_bytes(b"not a model at all\n" * 10)
    refused = http.post("/api/create", json={"model": "bad", "from": "smollm2:135m",
                                              "draft_files": {"notes.gguf": upload(http, text)}, "stream": False})
    assert refused.status_code == 400 and "DRAFT" in refused.json()["error"]
    assert "not a usable GGUF" in refused.json()["error"]


@pytest.mark.parametrize(("kind", "says"), [("projector", "vision projector"), ("adapter", "LoRA adapter"),
                                            ("embedding", "embedding model")])
def test_create_refuses_a_draft_that_generates_no_text(kind: str, says: str, model_path: Path,
                                                        tmp_path: Path) -> None:
    cache = settings.load().cache
    draft = {"projector": lambda: fixtures_models.projector(cache),
             "adapter": lambda: fixtures_models.lora_adapter(cache),
             "embedding": lambda: hostile_models.rewrite(model_path, tmp_path / "embedding.gguf", {
                 "llama.pooling_type": hostile_models.u32(1), "tokenizer.chat_template": None})}[kind]()
    store = Store.from_settings(dataclasses.replace(settings.load(), models=tmp_path / "store", noprune=False))
    with pytest.raises(CreateError, match=f"DRAFT .*{says}"):
        create.create(store, names.parse("refused"), Modelfile(from_=str(model_path), draft=str(draft)),
                      base_dir=tmp_path)
    assert not store.models()
