"""Fitting a conversation to the context renders it a logarithmic number of times, and drops exactly the
turns the one-at-a-time truncation (Ollama's) drops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ollama_py.engine.chat import ChatFormatter, ChatRequest
from ollama_py.engine.gotemplate import LimitExceeded, Limits, Template, TemplateError
from ollama_py.engine.goprompt import RenderedPrompt, parse_template
from ollama_py.llama.model import Model

CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
          "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def formatter(model: Model) -> Iterator[ChatFormatter]:
    f = ChatFormatter(model)
    yield f
    f.close()


def conversation(n: int) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(n):
        turns.append({"role": "user", "content": f"question {i} about the weather in town {i}"})
        turns.append({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "weather", "arguments": "{}"}}]} if i % 3 == 0 else {"role": "assistant", "content": f"answer {i}"})
        if i % 3 == 0:
            turns.append({"role": "tool", "content": f"sunny {i}"})
    return turns


def one_at_a_time(formatter: ChatFormatter, messages: list[dict[str, Any]], num_ctx: int,
                  render: Any) -> list[int]:
    """The truncation as it was: render, drop the oldest turn, again."""
    messages = list(messages)
    while True:
        prompt = formatter.model.vocab.tokenize(render(messages).prompt, add_special=True, parse_special=True)
        oldest = next((i for i, m in enumerate(messages[:-1]) if m.get("role") != "system"), None)
        if len(prompt) < num_ctx or oldest is None:
            return prompt
        del messages[oldest]
        while oldest < len(messages) - 1 and messages[oldest].get("role") == "tool":
            del messages[oldest]


def test_fitting_drops_what_one_at_a_time_drops_in_few_renders(formatter: ChatFormatter) -> None:
    template = parse_template(CHATML)
    renders = 0

    def tokenize(text: str) -> list[int]:
        return formatter.model.vocab.tokenize(text, add_special=True, parse_special=True)

    def render(messages: list[dict[str, Any]]) -> RenderedPrompt:
        nonlocal renders
        renders += 1
        return RenderedPrompt(prompt=template.render(messages))

    for n, num_ctx in ((20, 200), (30, 120), (3, 64), (40, 4096)):
        messages = conversation(n)
        expected = one_at_a_time(formatter, messages, num_ctx, render)
        renders = 0
        _, prompt = formatter._fit(ChatRequest(id="fit", messages=tuple(messages)), num_ctx, render, tokenize)
        assert prompt == expected
    messages = conversation(700)  # 2,100 messages
    renders = 0
    _, prompt = formatter._fit(ChatRequest(id="fit", messages=tuple(messages)), 256, render, tokenize)
    assert len(prompt) < 256
    assert renders <= 2 + (len(messages)).bit_length()


def test_go_template_limits_stop_loops_writers_and_cancelled_renders() -> None:
    loop = Template("{{range 1000000}}{{range 1000000}}{{end}}{{end}}")
    with pytest.raises(LimitExceeded) as steps:
        loop.execute({}, Limits(max_steps=10_000))
    assert steps.value.limit == "steps"
    with pytest.raises(LimitExceeded) as late:
        loop.execute({}, Limits(deadline=time.monotonic() + 0.05))
    assert late.value.limit == "time"
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(LimitExceeded) as gone:
        loop.execute({}, Limits(cancelled=cancelled))
    assert gone.value.limit == "cancelled"
    doubling = Template('{{$x := "ab"}}{{range 64}}{{$x = printf "%s%s" $x $x}}{{end}}')
    with pytest.raises(LimitExceeded) as big:
        doubling.execute({}, Limits(max_output=1 << 20))
    assert big.value.limit == "output"
    assert isinstance(big.value, TemplateError)
    assert Template('{{printf "%9999999d" 1}}').execute({}) == "%!(BADWIDTH)1"  # Go's fmt: no giant padding
