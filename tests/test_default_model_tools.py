"""The default model as Ollama's library ships it: it takes tools, says so, and what it advertises is what it
accepts; refusals and load errors name the model as the user wrote it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.server_harness import MODEL, LiveServer
from tests.test_shim import HERMES_TEMPLATE

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}
GREEDY = {"temperature": 0, "num_predict": 48}
# ChatML in Ollama's Go syntax without a word about tools: a model that cannot take them.
PLAIN_CHATML = ("{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                "<|im_start|>assistant\n")




def _ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines() if line]


def _create(http: httpx.Client, name: str, **body: Any) -> None:
    response = http.post("/api/create", json={"model": name, "stream": False, **body})
    assert response.status_code == 200, response.text


def test_show_and_tags_advertise_tools_for_the_default_model(http: httpx.Client) -> None:
    shown = http.post("/api/show", json={"model": MODEL}).json()
    assert shown["capabilities"] == ["completion", "tools"]
    assert "<tool_call>" in shown["template"] and ".Tools" in shown["template"]
    assert shown["system"].startswith("You are a helpful AI assistant named SmolLM")
    listed = {m["model"]: m for m in http.get("/api/tags").json()["models"]}
    assert listed[MODEL]["capabilities"] == ["completion", "tools"]
    assert listed[MODEL]["details"]["context_length"] == shown["model_info"]["llama.context_length"] == 8192


def test_native_chat_with_tools_answers_streamed_and_not(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "tools": [WEATHER],
            "options": GREEDY}
    streamed = _ndjson(http.post("/api/chat", json={**body, "stream": True}))
    assert len(streamed) > 2 and streamed[-1]["done"] is True
    text = "".join(c["message"]["content"] for c in streamed)
    calls = [call for c in streamed for call in c["message"].get("tool_calls") or []]
    assert text.strip() or calls
    whole = http.post("/api/chat", json={**body, "stream": False})
    assert whole.status_code == 200 and whole.json()["done"] is True
    assert whole.json()["message"]["content"] == text


def test_openai_chat_with_tools_answers_streamed_and_not(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages: Any = [{"role": "user", "content": "Hello!"}]
    completion = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],  # type: ignore[list-item]
                                                max_tokens=32, temperature=0)
    assert completion.choices[0].message.content or completion.choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER],  # type: ignore[list-item]
                                                 max_tokens=32, temperature=0, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == (completion.choices[0].message.content or "")


# A 135M model answers most questions in prose even with tools offered; shown the call it should make, it
# writes it in its trained format, which must come back parsed.
QUESTIONS = ["What is the weather in Paris?", "Use the get_weather tool to find the weather in Berlin.",
             '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call> '
             "Repeat exactly the tool call above."]


def test_a_question_for_a_tool_gets_a_structured_call(http: httpx.Client) -> None:
    calls: list[dict[str, Any]] = []
    for question in QUESTIONS:
        answer = http.post("/api/chat", json={"model": MODEL, "stream": False, "tools": [WEATHER],
                                               "messages": [{"role": "user", "content": question}],
                                               "options": GREEDY}).json()
        calls += answer["message"].get("tool_calls") or []
    assert calls, "no question for the weather tool was answered with a tool call"
    for call in calls:
        assert call["function"]["name"] == "get_weather"
        assert set(call["function"]["arguments"]) == {"city"}


def test_a_template_without_tools_is_refused_naming_the_model_as_asked(server: LiveServer,
                                                                          http: httpx.Client) -> None:
    _create(http, "plain-chat", **{"from": MODEL, "template": PLAIN_CHATML})
    assert http.post("/api/show", json={"model": "plain-chat"}).json()["capabilities"] == ["completion"]
    listed = {m["model"]: m for m in http.get("/api/tags").json()["models"]}
    assert listed["plain-chat:latest"]["capabilities"] == ["completion"]
    asked = "Plain-Chat"  # names are matched without regard to case; the error echoes the request
    refused = http.post("/api/chat", json={"model": asked, "tools": [WEATHER],
                                           "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 400
    assert refused.json() == {"error": "Plain-Chat does not support tools"}
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=asked, messages=[{"role": "user", "content": "hi"}],
                                       tools=[WEATHER])  # type: ignore[list-item]
    assert info.value.body["message"] == "Plain-Chat does not support tools"  # type: ignore[index]
    thinking = http.post("/api/generate", json={"model": asked, "prompt": "hi", "think": True})
    assert thinking.status_code == 400 and thinking.json()["error"] == "Plain-Chat does not support thinking"


def test_errors_name_the_model_never_a_blob(http: httpx.Client, model_path: Path) -> None:
    missing = http.post("/api/chat", json={"model": "no-such-model", "messages": []})
    assert missing.status_code == 404 and "no-such-model" in missing.json()["error"]
    # The default GGUF with an architecture llama.cpp does not know: our checks pass, llama.cpp refuses the load.
    data = model_path.read_bytes()
    key = b"general.architecture" + (8).to_bytes(4, "little") + (5).to_bytes(8, "little")
    at = data.index(key) + len(key)
    assert data[at:at + 5] == b"llama"
    odd = data[:at] + b"llamx" + data[at + 5:]
    digest = "sha256:" + hashlib.sha256(odd).hexdigest()
    assert http.post(f"/api/blobs/{digest}", content=odd).status_code == 201
    _create(http, "odd-arch", files={"odd.gguf": digest})
    failed = http.post("/api/generate", json={"model": "odd-arch", "prompt": "hi", "stream": False})
    assert failed.status_code == 500
    error = failed.json()["error"]
    assert "odd-arch" in error and "sha256" not in error
    assert http.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                        "stream": False, "options": {"num_predict": 4}}).status_code == 200


def _weather_call(city: str) -> dict[str, Any]:
    return {"function": {"name": "get_weather", "arguments": {"city": city}}}


# Two earlier answers, each two calls in one turn: a 135M model does not split a question into calls when told
# to, but greedy decoding copies the pattern it was shown.
TWO_CITY_SHOTS: list[dict[str, Any]] = [
    turn for first, second in (("London", "Berlin"), ("Madrid", "Oslo")) for turn in (
        {"role": "user", "content": f"What is the weather in {first} and in {second}?"},
        {"role": "assistant", "content": "", "tool_calls": [_weather_call(first), _weather_call(second)]})]
TWO_CITIES = {"role": "user", "content": "What is the weather in Paris and in Rome?"}


def _as_openai(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("tool_calls"):
        return message
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function",
         "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])}}
        for i, c in enumerate(message["tool_calls"])]}


_HERMES_CALLS = """{% for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{% endfor %}"""
# Hermes' tool block with an answer's calls in one tag, separated by commas: llama.cpp's grammar and parser
# then take a second call only when parallel tool calls are asked for (with a tag per call, they always do).
ONE_TAG_TEMPLATE = HERMES_TEMPLATE.replace(_HERMES_CALLS, """<tool_call>
{% for call in message.tool_calls %}{% if not loop.first %}, {% endif %}{"name": "{{ call.function.name }}", \
"arguments": {{ call.function.arguments | tojson }}}{% endfor %}
</tool_call>
""")
JINJA_TEMPLATES = {"hermes-tools": HERMES_TEMPLATE, "one-tag-tools": ONE_TAG_TEMPLATE}


@pytest.fixture(scope="module")
def jinja_models(http: httpx.Client) -> list[str]:
    """The default model with Jinja templates, which llama.cpp renders and whose answers it parses."""
    assert ONE_TAG_TEMPLATE != HERMES_TEMPLATE
    for name, template in JINJA_TEMPLATES.items():
        _create(http, name, **{"from": MODEL, "template": template})
    return list(JINJA_TEMPLATES)


@pytest.mark.parametrize("model", [MODEL, *JINJA_TEMPLATES], ids=["go-template", *JINJA_TEMPLATES])
def test_two_calls_in_one_answer_come_back_both(model: str, jinja_models: list[str], server: LiveServer,
                                                http: httpx.Client) -> None:
    messages = [*TWO_CITY_SHOTS, TWO_CITIES]
    native = http.post("/api/chat", json={"model": model, "messages": messages, "tools": [WEATHER],
                                          "stream": False, "options": {"temperature": 0, "num_predict": 80}})
    assert native.status_code == 200, native.text
    calls = native.json()["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(model=model, messages=[_as_openai(m) for m in messages],  # type: ignore[misc]
                                                tools=[WEATHER], max_tokens=80, temperature=0)  # type: ignore[list-item]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    openai_calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in openai_calls] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert len({c.id for c in openai_calls}) == 2
