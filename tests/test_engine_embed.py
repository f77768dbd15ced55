"""Embeddings on the real model: normalised, batched without changing results, truncation, dimensions."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from ollama_py.engine.embed import Embedder
from ollama_py.engine.types import PromptTooLong
from ollama_py.llama.model import Model

TEXTS = ["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly tax filings are due in April."]


@pytest.fixture(scope="module")
def embedder(model: Model) -> Iterator[Embedder]:
    e = Embedder(model, num_ctx=256, max_inputs=4)
    yield e
    e.close()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def test_vectors_are_unit_length_and_similar_texts_are_close(model: Model, embedder: Embedder) -> None:
    result = embedder.embed(TEXTS)
    assert len(result.embeddings) == 3
    for vector in result.embeddings:
        assert len(vector) == model.n_embd
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-5)
    cat, cat2, tax = result.embeddings
    assert cosine(cat, cat2) > cosine(cat, tax)
    assert result.prompt_eval_count == sum(len(model.vocab.tokenize(t)) for t in TEXTS)


def test_batching_inputs_does_not_change_their_vectors(embedder: Embedder) -> None:
    together = embedder.embed(TEXTS).embeddings
    for text, vector in zip(TEXTS, together):
        alone = embedder.embed([text]).embeddings[0]
        assert max(abs(a - b) for a, b in zip(alone, vector)) < 1e-4


def test_dimensions_cut_and_renormalise(embedder: Embedder) -> None:
    full = embedder.embed(TEXTS[:1]).embeddings[0]
    short = embedder.embed(TEXTS[:1], dimensions=64).embeddings[0]
    assert len(short) == 64
    assert math.isclose(math.sqrt(sum(v * v for v in short)), 1.0, rel_tol=1e-5)
    assert cosine(short, full[:64]) == pytest.approx(math.sqrt(sum(v * v for v in full[:64])), rel=1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        embedder.embed(TEXTS[:1], dimensions=10_000)


def test_long_input_is_truncated_or_refused(embedder: Embedder) -> None:
    long_text = "The sea is wide and deep. " * 80
    with pytest.raises(PromptTooLong, match="context length"):
        embedder.embed([long_text], truncate=False)
    result = embedder.embed([long_text, "short"])
    assert len(result.embeddings) == 2
    assert result.prompt_eval_count == embedder.num_ctx + len(embedder.model.vocab.tokenize("short"))
