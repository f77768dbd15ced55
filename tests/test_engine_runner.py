"""The continuous-batching runner on the real SmolLM2 model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import Done, DoneReason, GenerationRequest, PromptTooLong, Sampling, Token
from ollama_py.llama.model import Model

pytestmark = pytest.mark.asyncio

QUESTIONS = [
    "Write a poem about the sea.",
    "What is the capital of France?",
    "Explain gravity to a child.",
    "List three fruits.",
    "Tell me a joke about cats.",
    "How do computers work?",
    "What is 12 times 7?",
    "Describe a sunset.",
]
GREEDY = Sampling(temperature=0, num_predict=24)


@dataclass
class Result:
    tokens: list[int]
    text: str
    done: Done


def chat_prompt(model: Model, question: str) -> tuple[int, ...]:
    return tuple(model.vocab.tokenize(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
                                      parse_special=True))


async def run(runner: Runner, prompt: tuple[int, ...], sampling: Sampling = GREEDY, **kw: object) -> Result:
    tokens: list[int] = []
    text: list[str] = []
    request = GenerationRequest(id="t", prompt=prompt, sampling=sampling, **kw)  # type: ignore[arg-type]
    async with contextlib.aclosing(runner.submit(request)) as events:
        async for event in events:
            if isinstance(event, Token):
                tokens.append(event.token)
                text.append(event.text)
            else:
                text.append(event.text)
                return Result(tokens, "".join(text), event)
    raise AssertionError("the stream ended without Done")


@pytest.fixture(scope="module")
def runner(model: Model) -> Iterator[Runner]:
    r = Runner(model, RunnerOptions(num_ctx=512, num_parallel=4, num_batch=64))
    yield r
    r.close()


async def test_batching_does_not_change_greedy_output(model: Model, runner: Runner) -> None:
    prompts = [chat_prompt(model, q) for q in QUESTIONS]
    with Runner(model, RunnerOptions(num_ctx=512, num_parallel=1, num_batch=64)) as alone_runner:
        alone = [await run(alone_runner, p) for p in prompts]
    # 8 requests on 4 slots: 4 wait, and join while others are generating.
    together = await asyncio.gather(*(run(runner, p) for p in prompts))

    async def staggered(i: int, p: tuple[int, ...]) -> Result:
        for _ in range(i * 3):
            await asyncio.sleep(0.01)
        return await run(runner, p)

    late = await asyncio.gather(*(staggered(i, p) for i, p in enumerate(prompts)))
    for a, b, c in zip(alone, together, late):
        assert a.tokens, "every prompt produces some output"
        assert b.tokens == a.tokens
        assert c.tokens == a.tokens
        assert b.text == a.text


async def test_a_stream_moves_next_to_the_others_when_the_one_between_ends(
        model: Model, caplog: pytest.LogCaptureFixture) -> None:
    # llama.cpp computes several sequences' rows in one pass over the weights only while their ids follow one
    # another: when the middle of three requests ends, the one in slot 2 moves to slot 1. It answers as it
    # does alone, and what slot 1 held stays in the prompt cache.
    first, last = chat_prompt(model, "Write a poem about the sea."), chat_prompt(model, "Describe a sunset.")
    short = chat_prompt(model, "In two short sentences, how does gravity keep the moon in its orbit?")
    long, one = Sampling(temperature=0, num_predict=48), Sampling(temperature=0, num_predict=1)
    with Runner(model, RunnerOptions(num_ctx=512, num_parallel=1, num_batch=64)) as alone_runner:
        alone = [await run(alone_runner, p, long) for p in (first, last)]
    with (caplog.at_level(logging.DEBUG, logger="ollama_py.engine.runner"),
          Runner(model, RunnerOptions(num_ctx=512, num_parallel=3, num_batch=64)) as three):
        a, _, c = await asyncio.gather(run(three, first, long), run(three, short, one), run(three, last, long))
        again = await run(three, short, one)
    assert "slot 2 moved to slot 1" in caplog.text
    assert a.tokens == alone[0].tokens and c.tokens == alone[1].tokens
    assert c.text == alone[1].text
    assert again.done.prompt_cached == len(short) - 1


async def test_second_turn_evaluates_only_the_new_tokens(model: Model, runner: Runner) -> None:
    first = chat_prompt(model, "What is the capital of France?")
    answer = await run(runner, first, Sampling(temperature=0, num_predict=200))
    assert answer.done.reason is DoneReason.STOP  # ended with <|im_end|>, which is never decoded
    follow_up = tuple(model.vocab.tokenize("<|im_end|>\n<|im_start|>user\nAnd of Spain?<|im_end|>\n"
                                           "<|im_start|>assistant\n", add_special=False, parse_special=True))
    second = first + tuple(answer.tokens) + follow_up
    again = await run(runner, second, Sampling(temperature=0, num_predict=8))
    assert again.done.prompt_eval_count == len(follow_up)
    assert again.done.prompt_tokens == len(second)


async def test_same_prompt_twice_reevaluates_one_token(model: Model, runner: Runner) -> None:
    prompt = chat_prompt(model, "Describe a sunset in one word.")
    one = await run(runner, prompt)
    two = await run(runner, prompt)
    assert two.done.prompt_eval_count == 1  # the last prompt token gives the first logits
    assert two.tokens == one.tokens


async def test_cancelled_request_frees_its_slot(model: Model) -> None:
    with Runner(model, RunnerOptions(num_ctx=2048, num_parallel=1, num_batch=64)) as single:
        long_request = GenerationRequest(id="long", prompt=chat_prompt(model, "Write a very long story."),
                                         sampling=Sampling(temperature=0, num_predict=1500))
        events = single.submit(long_request)
        received = 0
        async for event in events:
            received += isinstance(event, Token)
            if received == 3:
                break
        await events.aclose()
        steps_at_cancel = single.steps
        short = await run(single, chat_prompt(model, "What is 12 times 7?"), Sampling(temperature=0, num_predict=5))
        assert short.done.eval_count == 5
        # The slot served only the new request: one step to see the cancel
        # at most, prefill chunks, then one step per new token.
        prefill_steps = -(-short.done.prompt_eval_count // 64)
        assert single.steps - steps_at_cancel <= 1 + prefill_steps + short.done.eval_count


async def test_num_predict_ends_with_length(model: Model, runner: Runner) -> None:
    result = await run(runner, chat_prompt(model, "Write a poem about the sea."),
                       Sampling(temperature=0, num_predict=7))
    assert result.done.reason is DoneReason.LENGTH
    assert result.done.eval_count == 7 == len(result.tokens)


async def test_context_end_without_shift_ends_with_length(model: Model) -> None:
    with Runner(model, RunnerOptions(num_ctx=64, num_parallel=1, num_batch=64)) as small:
        prompt = chat_prompt(model, "Write a long poem about the sea.")
        result = await run(small, prompt, Sampling(temperature=0, num_predict=-1), shift=False)
    assert result.done.reason is DoneReason.LENGTH
    assert len(prompt) + result.done.eval_count == small.num_ctx


async def test_stop_string_spanning_tokens_never_leaks(model: Model, runner: Runner) -> None:
    prompt = chat_prompt(model, "What is the capital of France?")
    full = await run(runner, prompt)
    pieces = [model.vocab.token_to_piece(t).decode() for t in full.tokens]
    # A stop string that starts inside one token and ends inside a later one.
    boundary = len(pieces[0]) + len(pieces[1])
    stop = full.text[boundary - 2:boundary + 3]
    assert len(stop) == 5 and stop not in "".join(pieces[:2]) and stop not in pieces[2]
    events: list[str] = []
    request = GenerationRequest(id="s", prompt=prompt, sampling=Sampling(temperature=0, num_predict=24, stop=(stop,)))
    async with contextlib.aclosing(runner.submit(request)) as stream:
        async for event in stream:
            events.append(event.text)
            if isinstance(event, Done):
                assert event.reason is DoneReason.STOP
    assert "".join(events) == full.text[:full.text.index(stop)]
    assert all(stop[:2] not in text for text in events)


async def test_prompt_longer_than_context(model: Model) -> None:
    with Runner(model, RunnerOptions(num_ctx=64, num_parallel=1, num_batch=64)) as small:
        prompt = chat_prompt(model, "Tell me about the sea. " * 30)
        with pytest.raises(PromptTooLong):
            await run(small, prompt, truncate=False)
        result = await run(small, prompt, Sampling(temperature=0, num_predict=4))
    assert result.done.truncated
    assert result.done.prompt_tokens < small.num_ctx
    assert result.done.eval_count == 4


async def test_logprobs_are_a_distribution(model: Model, runner: Runner) -> None:
    request = GenerationRequest(id="l", prompt=chat_prompt(model, "What is 12 times 7?"),
                                sampling=Sampling(temperature=0, repeat_penalty=1.0, num_predict=3), logprobs=True, top_logprobs=3)
    async with contextlib.aclosing(runner.submit(request)) as stream:
        tokens = [e async for e in stream if isinstance(e, Token)]
    for event in tokens:
        assert event.logprob is not None
        top = event.logprob.top_logprobs
        assert len(top) == 3 and top[0].logprob >= top[1].logprob >= top[2].logprob
        assert event.logprob.logprob == top[0].logprob  # greedy takes the most likely token
        assert sum(2.718281828 ** t.logprob for t in top) <= 1.0 + 1e-5


async def test_sampling_with_a_seed_repeats(model: Model, runner: Runner) -> None:
    prompt = chat_prompt(model, "Invent a name for a cat.")
    seeded = Sampling(temperature=1.0, seed=42, num_predict=12)
    one, two = await asyncio.gather(run(runner, prompt, seeded), run(runner, prompt, seeded))
    assert one.tokens == two.tokens
