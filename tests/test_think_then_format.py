"""A format on a model that thinks: the model reasons freely, the grammar takes over once the reasoning ends,
the reasoning comes back apart and the answer validates against the schema (issue 15, as Ollama does it).

SmolLM2-135M is no reasoning model, and it never writes `</think>` on its own within a few dozen tokens.
The template here marks reasoning as "Thought: ... ." (the tags Ollama reads from the text around
`.Thinking`), so the reasoning ends at the model's first full stop, which it writes in its first sentence.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from ollama_py.engine.chat import ChatFormatter, ChatRequest
from ollama_py.engine.goprompt import PromptTemplate
from ollama_py.engine.sampling import ReasoningGate
from ollama_py.llama.model import Model
from tests.server_harness import MODEL

THOUGHT_CHATML = (
    "{{- range $i, $m := .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}Thought: {{ .Thinking }}.{{ end }}{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
    "{{ if $.Think }}Thought:{{ end }}"
)
SCHEMA: dict[str, Any] = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
QUESTION = [{"role": "user", "content": "What is 2 + 2? Think about it first."}]
OPTIONS = {"temperature": 0, "num_predict": 96}


def test_the_template_marks_reasoning_with_a_full_stop() -> None:
    assert PromptTemplate(THOUGHT_CHATML).thinking_tags == ("Thought:", ".")


def test_the_gate_opens_after_the_closing_tag_or_at_an_answer_without_reasoning() -> None:
    inside = ReasoningGate("<think>", "</think>", opened=True)
    assert inside.admit("Two and two") and not inside.done
    assert inside.admit(" make four.</") and not inside.done
    assert inside.admit("think>\n") and inside.done
    before = ReasoningGate("<think>", "</think>", opened=False)
    assert before.admit("\n") and before.admit("<th") and before.admit("ink>") and not before.done
    assert before.admit("so </think>") and before.done
    answer_first = ReasoningGate("<think>", "</think>", opened=False)
    assert not answer_first.admit("{") and answer_first.done  # sampled again, under the grammar
    assert inside.stray == before.stray == 0
    # A token that closes the reasoning and starts the answer: its answer part came without the grammar, and
    # the runner drops it (the greedy answer of the end-to-end tests below once began with `."`).
    quoted = ReasoningGate("Thought:", ".", opened=True)
    assert quoted.admit(" Two and two make four") and not quoted.done
    assert quoted.admit('."') and quoted.done and quoted.stray == 1
    spaced = ReasoningGate("Thought:", ".", opened=True)
    assert spaced.admit(" Four.\n\n") and spaced.done and spaced.stray == 0


def test_the_request_carries_the_tags_only_with_a_format_and_thinking(model: Model) -> None:
    formatter = ChatFormatter(model)
    try:
        asked = formatter.prepare(ChatRequest(id="a", messages=tuple(QUESTION), template=THOUGHT_CHATML,
                                              format=SCHEMA), 1024)
        assert asked.request.reasoning_tags == ("Thought:", ".") and asked.request.reasoning_opened
        no_think = formatter.prepare(ChatRequest(id="b", messages=tuple(QUESTION), template=THOUGHT_CHATML,
                                                 format=SCHEMA, think=False), 1024)
        assert no_think.request.reasoning_tags is None
        free = formatter.prepare(ChatRequest(id="c", messages=tuple(QUESTION), template=THOUGHT_CHATML), 1024)
        assert free.request.reasoning_tags is None
    finally:
        formatter.close()


@pytest.fixture(scope="module")
def thinker(http: httpx.Client) -> str:
    response = http.post("/api/create", json={"model": "thinker", "from": MODEL, "template": THOUGHT_CHATML,
                                              "stream": False})
    assert response.status_code == 200, response.text
    return "thinker"


def test_native_chat_reasons_then_answers_in_the_schema(http: httpx.Client, thinker: str) -> None:
    response = http.post("/api/chat", json={"model": thinker, "messages": QUESTION, "format": SCHEMA,
                                            "stream": False, "options": OPTIONS})
    assert response.status_code == 200, response.text
    message = response.json()["message"]
    assert message["thinking"].strip(), message
    assert "Thought:" not in message["content"]
    jsonschema.validate(json.loads(message["content"]), SCHEMA)


def test_openai_chat_streams_reasoning_apart_and_a_valid_answer(http: httpx.Client, thinker: str) -> None:
    body = {"model": thinker, "messages": QUESTION, "stream": True, "temperature": 0, "max_tokens": 96,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}}
    content = reasoning = ""
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[len("data: "):])["choices"][0]["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
    assert reasoning.strip()
    jsonschema.validate(json.loads(content), SCHEMA)
