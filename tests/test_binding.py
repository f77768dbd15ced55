"""The binding on the real SmolLM2 model: tokens, generation, embeddings, samplers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.model import Model, ModelLoadError, ModelOptions
from ollama_py.llama.oneshot import generate_text, generate_tokens
from ollama_py.llama.sampler import GrammarError, Grammar, SamplerChain, SamplerConfig

PROMPT = "<|im_start|>user\nWrite a story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n"


def test_model_facts(model: Model) -> None:
    assert model.n_embd == 576
    assert model.n_layer == 30
    assert model.n_ctx_train == 8192
    assert model.metadata()["general.architecture"] == "llama"
    assert "im_start" in (model.chat_template() or "")


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "Grüße aus Köln — naïve café",
    "日本語のテキストと絵文字 🙂🚀",
    "  leading and trailing spaces  \n\ttabs",
])
def test_tokenize_detokenize_round_trip(model: Model, text: str) -> None:
    tokens = model.vocab.tokenize(text, add_special=False)
    assert tokens
    assert model.vocab.detokenize(tokens) == text
    pieces = b"".join(model.vocab.token_to_piece(t) for t in tokens)
    assert pieces.decode("utf-8") == text


def test_special_tokens_parse_only_when_asked(model: Model) -> None:
    parsed = model.vocab.tokenize("<|im_start|>", add_special=False, parse_special=True)
    literal = model.vocab.tokenize("<|im_start|>", add_special=False, parse_special=False)
    assert len(parsed) == 1 and len(literal) > 1
    assert model.vocab.text(parsed[0]) == "<|im_start|>"


def _greedy(ctx: Context, model: Model, n: int = 32) -> list[int]:
    sampler = SamplerChain(model.vocab, SamplerConfig(temperature=0))
    with sampler:
        return list(generate_tokens(ctx, sampler, model.vocab.tokenize(PROMPT, parse_special=True), n))


def test_greedy_generation_is_deterministic(model: Model, ctx: Context) -> None:
    first = _greedy(ctx, model)
    second = _greedy(ctx, model)
    assert len(first) == 32
    assert first == second
    assert model.vocab.detokenize(first).strip()


def test_seeded_sampler_reproduces_and_seeds_differ(model: Model, ctx: Context) -> None:
    prompt = model.vocab.tokenize(PROMPT, parse_special=True)

    def run(seed: int) -> list[int]:
        config = SamplerConfig(temperature=1.5, top_k=100, top_p=0.98, seed=seed)
        with SamplerChain(model.vocab, config) as sampler:
            return list(generate_tokens(ctx, sampler, prompt, 24))

    assert run(1234) == run(1234)
    assert len({tuple(run(seed)) for seed in (1, 2, 3)}) > 1


def test_generate_text_streams_whole_characters(model: Model, ctx: Context) -> None:
    prompt = model.vocab.tokenize(
        "<|im_start|>user\nRepeat exactly: 日本 🙂<|im_end|>\n<|im_start|>assistant\n", parse_special=True)
    with SamplerChain(model.vocab, SamplerConfig(temperature=0)) as sampler:
        chunks = list(generate_text(ctx, sampler, prompt, 16))
    # Several tokens here are fragments of one character; each chunk is whole
    # (only a character cut off by the token limit may end the stream).
    assert "日本" in "".join(chunks)
    assert all("\ufffd" not in chunk for chunk in chunks[:-1])


def test_sampler_chain_holds_the_configured_samplers(model: Model) -> None:
    config = SamplerConfig(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, typical_p=0.95,
                           repeat_last_n=64, repeat_penalty=1.1, seed=7)
    with SamplerChain(model.vocab, config) as sampler:
        assert sampler.names() == ["penalties", "top-k", "typical", "top-p", "min-p", "temp", "dist"]


def test_bad_grammar_is_an_exception(model: Model) -> None:
    with pytest.raises(GrammarError):
        SamplerChain(model.vocab, SamplerConfig(grammar=Grammar(gbnf="root ::= (")))


def test_embedding_has_model_width_and_unit_norm(model: Model) -> None:
    options = ContextOptions(n_ctx=512, n_batch=512, embeddings=True, pooling=1)
    with Context(model, options) as ectx, Batch(512, 1) as batch:
        batch.add_sequence(model.vocab.tokenize("The sky is blue."), 0, 0)
        ectx.decode(batch)
        vector = ectx.embedding(0)
        raw = ectx.embedding(0, normalize=False)
    assert len(vector) == model.n_embd
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-5)
    assert math.sqrt(sum(v * v for v in raw)) != pytest.approx(1.0)


def test_kv_cache_per_sequence(model: Model) -> None:
    with Context(model, ContextOptions(n_ctx=512, n_seq_max=2)) as c, Batch(64, 2) as batch:
        tokens = model.vocab.tokenize("one two three four")
        batch.add_sequence(tokens, 0, 0)
        c.decode(batch)
        assert c.seq_pos_max(0) == len(tokens) - 1
        assert c.seq_pos_max(1) == -1
        c.seq_cp(0, 1)
        assert c.seq_pos_max(1) == len(tokens) - 1
        assert c.seq_rm(0, 2, -1)
        assert c.seq_pos_max(0) == 1
        c.clear()
        assert c.seq_pos_max(1) == -1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        Model(tmp_path / "nope.gguf")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("this is not a model\n" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        Model(bogus)


@pytest.mark.parametrize("keep", [4, 24, 4096, 1_000_000, 60_000_000])
def test_truncated_gguf(tmp_path: Path, model_path: Path, keep: int) -> None:
    cut = tmp_path / "cut.gguf"
    with model_path.open("rb") as src:
        cut.write_bytes(src.read(keep))
    with pytest.raises(ModelLoadError):
        Model(cut, ModelOptions(use_mmap=keep % 2 == 0))


def test_closing_a_model_closes_its_children_first(model_path: Path) -> None:
    m = Model(model_path)
    c = Context(m, ContextOptions(n_ctx=256))
    sampler = SamplerChain(m.vocab, SamplerConfig(temperature=0))
    m.close()
    assert c.closed and sampler.closed and m.closed
    m.close()
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        m.vocab.tokenize("hi")
    with pytest.raises(RuntimeError, match="closed"):
        Context(m)
