"""The per-token hot path on the real model: grammar by rejection, log-probabilities in C, answers read once
per token, and the defaults llama-server runs with."""

from __future__ import annotations

import asyncio
import ctypes
import json
import math
import os
import random
from collections.abc import Iterator

import jsonschema
import pytest

from ollama_py.engine.answer_stream import GoAnswer
from ollama_py.engine.chat import grammar_for_format
from ollama_py.engine.goprompt import RenderedPrompt
from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import GenerationRequest, Sampling
from ollama_py.llama import capi
from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context, ContextOptions, physical_cores
from ollama_py.llama.lib import llama, shim
from ollama_py.llama.model import Model
from ollama_py.llama.oneshot import generate_tokens
from ollama_py.llama.sampler import Grammar, SamplerChain, SamplerConfig
from ollama_py.llama.shim import json_schema_to_grammar
from tests.runner_harness import collect

QUESTIONS = ["Write a poem about the sea.", "What is the capital of France?", "Explain gravity to a child.",
             "List three fruits.", "Tell me a joke about cats.", "How do computers work?"]
GREEDY = Sampling(temperature=0, num_predict=20)
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def chat_prompt(model: Model, question: str) -> tuple[int, ...]:
    return tuple(model.vocab.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                                      parse_special=True))


@pytest.fixture(scope="module")
def runner(model: Model) -> Iterator[Runner]:
    with Runner(model, RunnerOptions(num_ctx=512, num_parallel=8, num_batch=64)) as r:
        yield r


def test_greedy_grammar_by_rejection_picks_what_grammar_first_picks(model: Model, ctx: Context) -> None:
    """Checking only the chosen token, and resampling when it is refused, is the grammar-first chain's choice."""
    prompt = list(chat_prompt(model, "Describe a person as JSON."))
    grammar = json_schema_to_grammar(SCHEMA)
    with SamplerChain(model.vocab, SamplerConfig(temperature=0, grammar=Grammar(gbnf=grammar))) as sampler:
        ours = list(generate_tokens(ctx, sampler, prompt, 60))
    lib = llama()
    params = lib.llama_sampler_chain_default_params()
    chain = lib.llama_sampler_chain_init(params)
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_grammar(model.vocab.ptr, grammar.encode(), b"root"))
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
    try:
        expected: list[int] = []
        ctx.seq_rm(0)
        with Batch(len(prompt), 1) as batch:
            index = batch.add_sequence(prompt, 0, 0)
            ctx.decode(batch)
            for pos in range(len(prompt), len(prompt) + 60):
                token = int(lib.llama_sampler_sample(chain, ctx.ptr, index))
                if model.vocab.is_eog(token):
                    break
                expected.append(token)
                batch.clear()
                index = batch.add(token, pos, (0,), True)
                ctx.decode(batch)
    finally:
        lib.llama_sampler_free(chain)
    assert ours == expected
    jsonschema.validate(json.loads(model.vocab.detokenize(ours)), SCHEMA)


def test_sampled_output_under_a_grammar_stays_valid(model: Model, ctx: Context) -> None:
    prompt = list(chat_prompt(model, "Describe a person as JSON."))
    for seed in (11,):
        config = SamplerConfig(temperature=1.2, seed=seed, grammar=Grammar(gbnf=json_schema_to_grammar(SCHEMA)))
        with SamplerChain(model.vocab, config) as sampler:
            tokens = list(generate_tokens(ctx, sampler, prompt, 150))
        jsonschema.validate(json.loads(model.vocab.detokenize(tokens)), SCHEMA)


def test_logprobs_in_c_are_the_log_softmax_of_the_logits(model: Model, ctx: Context) -> None:
    prompt = list(chat_prompt(model, "What is the capital of France?"))
    ctx.seq_rm(0)
    with Batch(len(prompt), 1) as batch:
        index = batch.add_sequence(prompt, 0, 0)
        ctx.decode(batch)
    logits = list(ctx.logits(index))
    peak = max(logits)
    log_total = peak + math.log(sum(math.exp(v - peak) for v in logits))
    expected_top = sorted(range(len(logits)), key=logits.__getitem__, reverse=True)[:5]
    chosen = ctypes.c_float()
    ids = (capi.llama_token * 5)()
    values = (ctypes.c_float * 5)()
    n = shim().ollama_py_logprobs(ctx.ptr, index, 42, 5, ctypes.byref(chosen), ids, values)
    assert n == 5 and list(ids) == expected_top
    assert chosen.value == pytest.approx(logits[42] - log_total, abs=1e-4)
    assert [v for v in values] == pytest.approx([logits[t] - log_total for t in expected_top], abs=1e-4)


@pytest.mark.asyncio
async def test_logprobs_from_the_runner_rank_the_greedy_choice_first(model: Model, runner: Runner) -> None:
    request = GenerationRequest(id="lp", prompt=chat_prompt(model, QUESTIONS[1]), sampling=GREEDY,
                                logprobs=True, top_logprobs=3)
    tokens, _, logprobs, _ = await collect(runner, request)
    assert len(logprobs) == len(tokens) > 0
    for lp in logprobs:
        assert len(lp.top_logprobs) == 3 and lp.logprob <= 0
        assert lp.top_logprobs[0].logprob == pytest.approx(lp.logprob, abs=1e-5)  # greedy takes the most likely
        assert [t.logprob for t in lp.top_logprobs] == sorted((t.logprob for t in lp.top_logprobs), reverse=True)


@pytest.mark.asyncio
async def test_plain_streams_keep_their_greedy_output_beside_logprobs_and_a_schema(model: Model,
                                                                                  runner: Runner) -> None:
    """Issue 14: six plain greedy streams give what they give alone while one request asks for top_logprobs
    and another for a JSON schema in the same batches."""
    def plain(i: int) -> GenerationRequest:
        return GenerationRequest(id=f"p{i}", prompt=chat_prompt(model, QUESTIONS[i]), sampling=GREEDY)

    alone = [await collect(runner, plain(i)) for i in range(6)]
    with_logprobs = GenerationRequest(id="lp", prompt=chat_prompt(model, "Name a color."),
                                      sampling=Sampling(temperature=0, num_predict=30), logprobs=True,
                                      top_logprobs=5)
    with_schema = GenerationRequest(id="js", prompt=chat_prompt(model, "Describe a person as JSON."),
                                    sampling=Sampling(temperature=0, num_predict=60),
                                    grammar=grammar_for_format(SCHEMA))
    together = await asyncio.gather(collect(runner, with_logprobs), collect(runner, with_schema),
                                    *(collect(runner, plain(i)) for i in range(6)))
    assert [r[0] for r in together[2:]] == [r[0] for r in alone]
    assert together[0][2] and all(len(lp.top_logprobs) == 5 for lp in together[0][2])
    jsonschema.validate(json.loads(together[1][1]), SCHEMA)


def test_a_go_answer_read_token_by_token_matches_reading_it_whole() -> None:
    """The incremental reader gives each token exactly what parsing the whole answer again would add."""
    pieces = ["<think>", "</think>", "<th", "ink>", "</", "think", ">", " ", "\n", "a", "{", "}", '"name"', ":",
              '"get_weather"', '"arguments"', "{}", ",", "<tool_call>", "</tool_call>", "<tool", "_call>", "[", "]"]
    rng = random.Random(7)
    for _ in range(3000):
        rendered = RenderedPrompt(prompt=rng.choice(["user\n", "assistant\n<think>"]),
                                  thinking_tags=rng.choice([None, ("<think>", "</think>")]),
                                  tool_tag=rng.choice(["{", "<tool_call>", "["]),
                                  tool_names=rng.choice([(), ("get_weather",), ("get_weather", "get")]))
        reader = GoAnswer(rendered)
        text = sent_content = sent_thinking = ""
        for piece in (rng.choice(pieces) for _ in range(rng.randint(1, 24))):
            text += piece
            whole = rendered.parse(text, partial=True)
            content = whole.content[len(sent_content):] if whole.content.startswith(sent_content) else ""
            thinking = whole.reasoning[len(sent_thinking):] if whole.reasoning.startswith(sent_thinking) else ""
            sent_content += content
            sent_thinking += thinking
            assert reader.feed(piece) == (content, thinking), (rendered, text)


def test_defaults_are_llama_servers(model: Model) -> None:
    """Flash attention on where supported, a q8_0 cache that loads, a step larger than the micro-batch,
    and one thread per physical core."""
    assert RunnerOptions().flash_attention == "auto"
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    assert ContextOptions().flash_attn == capi.FLASH_ATTN_AUTO
    with Runner(model, RunnerOptions(num_ctx=256, num_parallel=2, num_batch=64, kv_cache_type="q8_0")) as r:
        assert r._ctx.n_batch > r._ctx.options.n_ubatch == 64
        tokens, text, _, _ = asyncio.run(collect(r, GenerationRequest(
            id="q8", prompt=chat_prompt(model, QUESTIONS[1]), sampling=GREEDY)))
        assert tokens and "Paris" in text


def test_a_quantized_cache_without_flash_attention_falls_back_to_f16(model: Model,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with Runner(model, RunnerOptions(num_ctx=256, num_parallel=1, num_batch=64, kv_cache_type="q8_0",
                                     flash_attention="off")):
        pass
    assert "needs flash attention" in caplog.text
