"""Context shift: an answer runs past num_ctx as in Ollama; `shift: false` stops it with "length"."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from ollama_py.engine.runner import Runner, RunnerOptions, fit_prompt
from ollama_py.engine.types import (
    Done,
    DoneReason,
    GenerationRequest,
    PromptTooLong,
    Sampling,
    Token,
)
from ollama_py.llama.model import Model

NUM_CTX = 64


async def answer(runner: Runner, prompt: tuple[int, ...], shift: bool) -> tuple[list[int], Done]:
    request = GenerationRequest(id="s", prompt=prompt, sampling=Sampling(temperature=0, num_predict=120),
                                shift=shift)
    tokens: list[int] = []
    async with contextlib.aclosing(runner.submit(request)) as events:
        async for event in events:
            if isinstance(event, Token):
                tokens.append(event.token)
            elif isinstance(event, Done):
                return tokens, event
    raise AssertionError("the stream ended without Done")


@pytest.mark.asyncio
async def test_an_answer_runs_past_the_context_with_shift_and_stops_without(model: Model) -> None:
    prompt = tuple(model.vocab.tokenize("<|im_start|>user\nWrite a long poem about the sea.<|im_end|>\n"
                                        "<|im_start|>assistant\n", parse_special=True))
    with Runner(model, RunnerOptions(num_ctx=NUM_CTX, num_parallel=1, num_batch=64)) as small:
        stopped, at_end = await answer(small, prompt, shift=False)
        shifted, went_on = await answer(small, prompt, shift=True)
        # The slot kept only num_keep tokens after the shift: the next request shares no stale cells.
        again, _ = await answer(small, prompt, shift=False)
    assert at_end.reason is DoneReason.LENGTH
    assert len(prompt) + at_end.eval_count == small.num_ctx
    assert len(prompt) + went_on.eval_count > small.num_ctx
    assert went_on.eval_count == 120 or went_on.reason is DoneReason.STOP
    assert shifted[:len(stopped)] == stopped  # identical up to where the context was full
    assert again == stopped


def test_fit_prompt_keeps_num_keep_and_half_the_rest_when_shifting() -> None:
    prompt = list(range(100))
    cut, truncated = fit_prompt(prompt, 64, 4, True, shift=True)
    assert truncated and cut == list(range(4)) + list(range(70, 100))  # 4 + (64 - 4) // 2 tokens
    cut, truncated = fit_prompt(prompt, 64, 4, True, shift=False)
    assert truncated and cut == list(range(4)) + list(range(56, 100))  # three quarters: room for the answer
    assert fit_prompt(prompt[:63], 64, 4, True) == (prompt[:63], False)


def test_fit_prompt_without_truncating_refuses_only_what_is_longer_than_the_context() -> None:
    prompt = list(range(65))
    assert fit_prompt(prompt[:64], 64, 4, False) == (prompt[:64], False)
    with pytest.raises(PromptTooLong, match="^the input length exceeds the context length"):
        fit_prompt(prompt, 64, 4, False)


def test_shift_false_over_http(http: httpx.Client) -> None:
    body = {"model": "smollm2:135m", "prompt": "Write a long poem about the sea.", "stream": False,
            "options": {"temperature": 0, "num_predict": 120, "num_ctx": NUM_CTX}}
    stopped = http.post("/api/generate", json={**body, "shift": False}, timeout=600).json()
    assert stopped["done_reason"] == "length"
    assert stopped["prompt_eval_count"] + stopped["eval_count"] == NUM_CTX
    went_on = http.post("/api/generate", json=body, timeout=600).json()
    assert went_on["prompt_eval_count"] + went_on["eval_count"] > NUM_CTX
    assert went_on["response"].startswith(stopped["response"])
