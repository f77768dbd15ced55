"""Reasoning levels reach the template as the model expects them, and `think: false` hides reasoning.

A Go template sees `.Think` and `.ThinkLevel` (what Ollama passes); a Jinja template sees
`reasoning_effort` (what llama.cpp passes gpt-oss), where "max" is "high". OpenAI's efforts map onto
Ollama's levels as Ollama maps them. The prompts are read back from `context`, the tokens of what the
model was given (special tokens left out, so the levels are bracketed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from ollama_py import settings
from tests.server_harness import MODEL, LiveServer, default_store, live_server, server_settings

GO_LEVELS = "smollm2-go-levels"
JINJA_LEVELS = "smollm2-jinja-levels"
ALWAYS_THINKS = "smollm2-always-thinks"
# ChatML whose system turn names the level; "max" adds a sentence, so that prompt lengths tell levels apart.
GO_TEMPLATE = (
    "<|im_start|>system\nReasoning: [{{ .ThinkLevel }}]{{ if eq .ThinkLevel \"max\" }}, as long as it takes{{ end }}"
    "<|im_end|>\n"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n{{ if .Think }}<think>\n{{ end }}")
JINJA_TEMPLATE = (
    "<|im_start|>system\nReasoning: [{{ reasoning_effort | default('unset') }}]<|im_end|>\n"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}<think></think>"
    "{% else %}<think>\n{% endif %}")
# A model that reasons whatever it is told: the template opens the reasoning itself.
ALWAYS_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n<think>\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("store")
    cache = settings.load().cache
    with live_server(server_settings(root, cache), default_store(root, cache)) as live:
        for name, template in ((GO_LEVELS, GO_TEMPLATE), (JINJA_LEVELS, JINJA_TEMPLATE),
                               (ALWAYS_THINKS, ALWAYS_TEMPLATE)):
            created = httpx.post(f"{live.url}/api/create", timeout=120, json={
                "model": name, "from": MODEL, "template": template, "stream": False})
            assert created.json() == {"status": "success"}, created.text
        yield live


def prompt_of(http: httpx.Client, model: str, think: Any) -> str:
    """The prompt the model was given for `think`, read back from the tokens /api/generate returns."""
    response = http.post("/api/generate", json={"model": model, "prompt": "Hi.", "think": think, "stream": False,
                                                 "options": {"num_predict": 1, "temperature": 0}})
    assert response.status_code == 200, response.text
    tokens = response.json()["context"]
    text = http.post("/api/detokenize", json={"model": MODEL, "tokens": tokens}).json()["text"]
    return str(text)


@pytest.mark.parametrize("think, shown", [
    ("low", "Reasoning: [low]"), ("high", "Reasoning: [high]"), ("max", "Reasoning: [max], as long as it takes"),
    (True, "Reasoning: [medium]"),  # a plain true is "medium", as api.ThinkValue.String() says
    (False, "Reasoning: []"),
])
def test_a_go_template_sees_the_level(http: httpx.Client, think: Any, shown: str) -> None:
    assert shown in prompt_of(http, GO_LEVELS, think)


@pytest.mark.parametrize("think, shown", [
    ("low", "Reasoning: [low]"), ("high", "Reasoning: [high]"), ("max", "Reasoning: [high]"),
    (True, "Reasoning: [unset]"),
])
def test_a_jinja_template_sees_reasoning_effort(http: httpx.Client, think: Any, shown: str) -> None:
    assert shown in prompt_of(http, JINJA_LEVELS, think)


def _prompt_tokens(http: httpx.Client, **effort: Any) -> int:
    response = http.post("/v1/chat/completions", json={
        "model": GO_LEVELS, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 1, "temperature": 0,
        **effort})
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens"])


def test_openai_efforts_map_onto_ollamas_levels(http: httpx.Client) -> None:
    by_effort = {effort: _prompt_tokens(http, reasoning_effort=effort)
                 for effort in ("minimal", "low", "high", "max", "xhigh", "ultra", "none")}
    assert by_effort["minimal"] == by_effort["low"]
    assert by_effort["xhigh"] == by_effort["ultra"] == by_effort["max"] > by_effort["high"]
    assert by_effort["none"] < by_effort["low"]  # no level and no opened reasoning block
    assert _prompt_tokens(http, reasoning={"effort": "ultra"}, reasoning_effort="low") == by_effort["max"]


def _chat(http: httpx.Client, think: bool) -> dict[str, Any]:
    response = http.post("/api/chat", json={
        "model": ALWAYS_THINKS, "messages": [{"role": "user", "content": "Why is the sky blue?"}], "think": think,
        "options": {"temperature": 0, "num_predict": 24}})
    assert response.status_code == 200, response.text
    lines = [orjson.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["done"] is True
    return {"content": "".join(line["message"]["content"] for line in lines),
            "thinking": "".join(line["message"].get("thinking", "") for line in lines)}


def test_think_false_hides_the_reasoning_of_a_model_that_always_reasons(http: httpx.Client) -> None:
    shown = _chat(http, think=True)
    assert shown["thinking"]  # the template opened a reasoning block, and the model reasoned in it
    hidden = _chat(http, think=False)
    assert hidden["thinking"] == ""
    assert hidden["content"] == shown["content"] and shown["thinking"].strip() not in hidden["content"]
