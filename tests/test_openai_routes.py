"""OpenAI's API on a live server, driven by the real `openai` SDK and by LangChain's chat models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from ollama_py import settings
from tests.server_harness import (
    MODEL,
    LiveServer,
    default_store,
    live_server,
    server_settings,
)
from tests.test_shim import HERMES_TEMPLATE, WEATHER_TOOL

TOOLS_MODEL = "smollm2-tools"  # the default model with a Jinja TEMPLATE that offers tools
HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("store")
    cache = settings.load().cache
    with live_server(server_settings(root, cache), default_store(root, cache)) as live:
        created = httpx.post(f"{live.url}/api/create", timeout=120, json={
            "model": TOOLS_MODEL, "from": MODEL, "template": HERMES_TEMPLATE, "stream": False})
        assert created.json() == {"status": "success"}
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_chat_completion_with_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens <= 8
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_streamed_chat_ends_with_usage_and_matches_the_whole_answer(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL, "messages": HELLO, "max_completion_tokens": 8, "temperature": 0}
    client.chat.completions.create(**args)  # same footing (prefix cache) for the two answers compared below
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8
    assert len({c.id for c in chunks}) == 1


def weather_turns(city: str, n: int) -> list[dict[str, Any]]:
    """One worked example of a tool call and its result: a 135M model calls tools when shown how."""
    call = {"id": f"call_{n}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return [{"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{n}", "content": "12C, cloudy"},
            {"role": "assistant", "content": f"It is 12C and cloudy in {city}."}]


ASK_TOOLS = [*weather_turns("London", 1), *weather_turns("Berlin", 2), *weather_turns("Rome", 3),
             {"role": "user", "content": "What is the weather in Paris?"}]
SEEDS = range(6)


def test_tool_calls_come_back_parsed(client: openai.OpenAI) -> None:
    def ask(seed: int) -> Any:
        return client.chat.completions.create(model=TOOLS_MODEL, messages=ASK_TOOLS, tools=[WEATHER_TOOL],
                                              max_tokens=60, seed=seed).choices[0]

    with ThreadPoolExecutor(len(SEEDS)) as pool:
        choices = list(pool.map(ask, SEEDS))
    called = [c for c in choices if c.message.tool_calls]
    assert called, [c.message.content for c in choices]
    for choice in called:  # several calls in one answer are allowed, as Ollama allows them
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
            assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert all("<tool_call>" not in (c.message.content or "") for c in choices)


def test_streamed_tool_calls_come_whole_with_an_index(client: openai.OpenAI) -> None:
    def ask(seed: int) -> list[Any]:
        return list(client.chat.completions.create(model=TOOLS_MODEL, messages=ASK_TOOLS, tools=[WEATHER_TOOL],
                                                   max_tokens=60, seed=seed, stream=True))

    with ThreadPoolExecutor(len(SEEDS)) as pool:
        streams = list(pool.map(ask, SEEDS))
    called = 0
    for chunks in streams:
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        if calls:
            called += 1
            assert [call.index for call in calls] == list(range(len(calls)))  # several are allowed, as in Ollama
            for call in calls:
                assert call.function is not None and call.function.name == "get_weather"
                assert json.loads(call.function.arguments or "")
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert called


def test_a_tool_result_goes_back_into_the_conversation(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ]
    completion = client.chat.completions.create(model=TOOLS_MODEL, messages=messages, tools=[WEATHER_TOOL],
                                                tool_choice="none", max_tokens=30, temperature=0)
    assert completion.choices[0].message.content and not completion.choices[0].message.tool_calls


def test_tools_on_a_model_without_them_are_refused(server: LiveServer, client: openai.OpenAI) -> None:
    plain = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    created = httpx.post(f"{server.url}/api/create", timeout=120,
                         json={"model": "no-tools", "from": MODEL, "template": plain, "stream": False})
    assert created.json() == {"status": "success"}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="no-tools", messages=HELLO, tools=[WEATHER_TOOL])
    assert info.value.body["message"] == "no-tools does not support tools"  # type: ignore[index]


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 15},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "A city and its population, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        max_tokens=80, temperature=0)
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), schema)


def test_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=3, temperature=0,
                                                logprobs=True, top_logprobs=2)
    content = completion.choices[0].logprobs.content
    assert content is not None and len(content) == 3
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


def test_completions_streamed_and_not(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Say hi.", max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens <= 6
    chunks = list(client.completions.create(model=MODEL, prompt="Say hi.", max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6


def test_embeddings_in_both_encodings(client: openai.OpenAI) -> None:
    base64 = client.embeddings.create(model=MODEL, input=["a cat", "a dog"])  # the SDK asks for base64
    floats = client.embeddings.create(model=MODEL, input="a cat", encoding_format="float")
    assert [d.index for d in base64.data] == [0, 1]
    assert base64.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert base64.usage.prompt_tokens > 0
    assert len(client.embeddings.create(model=MODEL, input="x", dimensions=16).data[0].embedding) == 16


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {MODEL, f"{TOOLS_MODEL}:latest"} <= ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nothing-here")


def test_errors_in_openai_shape(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.status_code == 404 and "not found" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[])
    assert "$.messages" in bad.value.message
    raw = httpx.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, "messages": [], "n": 2})
    error = raw.json()["error"]
    assert raw.status_code == 400 and error["type"] == "invalid_request_error" and set(error) == {
        "message", "type", "param", "code"}


def test_a_full_queue_is_429_so_sdks_retry(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("busy")
    cache = settings.load().cache
    with live_server(server_settings(root, cache, max_queue=0), default_store(root, cache)) as live:
        busy = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            busy.chat.completions.create(model=MODEL, messages=HELLO)
        assert info.value.response.headers["Retry-After"]
        native = httpx.post(f"{live.url}/api/chat", json={"model": MODEL, "messages": HELLO})
        assert native.status_code == 503 and "server busy" in native.json()["error"]


def test_langchain_chat_models_complete_and_stream(server: LiveServer) -> None:
    via_openai = ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model=MODEL,
                            max_completion_tokens=8, temperature=0, stream_usage=True)
    via_ollama = ChatOllama(base_url=server.url, model=MODEL, num_predict=8, temperature=0)
    for chat in (via_openai, via_ollama):
        answer = chat.invoke("Say hello.")
        assert isinstance(answer.content, str) and answer.content
        assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] <= 8
        streamed = "".join(str(chunk.content) for chunk in chat.stream("Say hello."))
        assert streamed


def test_stop_strings_end_the_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0, stop=["!"])
    choice = completion.choices[0]
    assert "!" not in (choice.message.content or "") and choice.finish_reason == "stop"


def test_images_need_a_vision_model_and_a_data_uri(client: openai.OpenAI) -> None:
    pixel = "data:image/png;base64,iVBORw0KGgo="
    for url, message in ((pixel, f"{MODEL} does not support vision"), ("https://example.com/cat.png", "data: URI")):
        content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])
        assert message in info.value.message
