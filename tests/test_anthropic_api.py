"""Anthropic's Messages API, driven by the real `anthropic` SDK against a live server that requires a key
(the SDK sends it as `x-api-key`, as Claude Code does)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from ollama_py import settings
from tests.server_harness import (
    MODEL,
    THINKING_CHATML,
    LiveServer,
    default_store,
    live_server,
    server_settings,
)

KEY = "anthropic-test-key"
GREEDY: dict[str, Any] = {"temperature": 0}  # this SDK has no temperature argument any more: sent as an extra
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                            "required": ["city"]}}
# Shown the call it should make, the default model writes it in its trained format (tests/test_default_model_tools.py).
CALL_PROMPT = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call> '
               "Repeat exactly the tool call above.")
HELLO: Any = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("store")
    cache = settings.load().cache
    with live_server(server_settings(root, cache, api_keys=(KEY,)), default_store(root, cache)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=300)


def _sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of a server-sent event stream."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_create_answers_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO, extra_body=GREEDY)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text.strip()  # type: ignore[union-attr]
    # "Hello!" is answered in more than eight tokens: the answer is cut at max_tokens and says so.
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == 8 and message.usage.input_tokens > 0


def test_the_system_prompt_as_blocks_is_the_same_prompt(client: anthropic.Anthropic) -> None:
    as_text = client.messages.count_tokens(model=MODEL, messages=HELLO, system="Answer briefly.\nBe kind.")
    as_blocks = client.messages.count_tokens(model=MODEL, messages=HELLO, system=[
        {"type": "text", "text": "Answer briefly."}, {"type": "text", "text": "Be kind."}])
    one = client.messages.count_tokens(model=MODEL, messages=HELLO, system="Answer briefly.")
    assert as_text.input_tokens == as_blocks.input_tokens > one.input_tokens


def test_count_tokens_counts_the_prompt_the_model_reads(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
    answered = client.messages.create(model=MODEL, max_tokens=1, messages=HELLO, extra_body=GREEDY)
    assert counted.input_tokens == answered.usage.input_tokens > 0
    longer = client.messages.count_tokens(model=MODEL, messages=[
        *HELLO, {"role": "assistant", "content": "Hi! How can I help?"}, {"role": "user", "content": "Tell a joke."}])
    assert longer.input_tokens > counted.input_tokens


def test_a_stream_has_anthropics_events_in_order(server: LiveServer) -> None:
    body = {"model": MODEL, "max_tokens": 6, "messages": HELLO, "stream": True, **GREEDY}
    with server.client() as http:
        events = _sse(http.post("/v1/messages", json=body, headers={"x-api-key": KEY}))
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas) and "".join(d["text"] for d in deltas).strip()
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "max_tokens"
    assert final["usage"]["output_tokens"] == 6 and final["usage"]["input_tokens"] > 0


def test_the_sdk_stream_accumulates_the_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=10, messages=HELLO, extra_body=GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed.strip() and final.content[0].text == streamed  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10 and final.usage.input_tokens > 0


def test_a_stop_sequence_ends_the_answer_and_is_reported(client: anthropic.Anthropic) -> None:
    ask: Any = [{"role": "user", "content": "Tell me about Paris."}]
    client.messages.create(model=MODEL, max_tokens=24, messages=ask, extra_body=GREEDY)  # the prompt now cached
    full = client.messages.create(model=MODEL, max_tokens=24, messages=ask, extra_body=GREEDY).content[0].text  # type: ignore[union-attr]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip()
    cut = client.messages.create(model=MODEL, max_tokens=24, messages=ask, stop_sequences=[stop], extra_body=GREEDY)
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == full[:full.index(stop)]  # type: ignore[union-attr]


def test_an_unknown_model_is_a_404_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=4, messages=HELLO)
    assert info.value.status_code == 404
    assert info.value.body == {"type": "error", "error": {"type": "not_found_error",
                                                         "message": "model 'no-such-model:latest' not found"}}


def test_bad_requests_are_400s_in_anthropics_shape(server: LiveServer) -> None:
    with server.client(headers={"x-api-key": KEY}) as http:
        missing = http.post("/v1/messages", json={"model": MODEL, "messages": HELLO})
        assert missing.status_code == 400
        assert missing.json()["type"] == "error" and missing.json()["error"]["type"] == "invalid_request_error"
        assert "max_tokens" in missing.json()["error"]["message"]
        unknown_block = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": [
            {"role": "user", "content": [{"type": "document", "source": {}}]}]})
        assert unknown_block.status_code == 400 and "messages[0].content[0]" in unknown_block.json()["error"]["message"]
        no_tool = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": HELLO,
                                                  "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}})
        assert no_tool.status_code == 400 and "no tool named 'nope'" in no_tool.json()["error"]["message"]


def test_images_and_thinking_are_refused_as_the_native_route_refuses_them(client: anthropic.Anthropic,
                                                                           server: LiveServer) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(32)).decode()
    with pytest.raises(anthropic.BadRequestError) as image:
        client.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "text", "text": "What is this?"}]}])
    with pytest.raises(anthropic.BadRequestError) as thinking:
        client.messages.create(model=MODEL, max_tokens=4, messages=HELLO,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    with server.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        native_image = http.post("/api/chat", json={"model": MODEL, "messages": [
            {"role": "user", "content": "What is this?", "images": [png]}]}).json()["error"]
        native_think = http.post("/api/chat", json={"model": MODEL, "messages": HELLO, "think": True}).json()["error"]
    assert image.value.body["error"] == {"type": "invalid_request_error", "message": native_image}  # type: ignore[index]
    assert thinking.value.body["error"]["message"] == native_think  # type: ignore[index]
    assert native_image == f"{MODEL} does not support vision"


def test_earlier_thinking_and_tool_turns_are_accepted(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=4, tools=[WEATHER], extra_body=GREEDY, messages=[  # type: ignore[list-item]
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "The user wants the weather.", "signature": ""},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 22 C"}]}])
    assert message.content and message.usage.input_tokens > 0


def test_a_tool_call_streams_as_a_tool_use_block_and_round_trips(client: anthropic.Anthropic) -> None:
    ask: Any = [{"role": "user", "content": CALL_PROMPT}]
    with client.messages.stream(model=MODEL, max_tokens=48, messages=ask, tools=[WEATHER],  # type: ignore[list-item]
                                extra_body=GREEDY) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds  # the SDK's event for an input_json_delta
    calls = [block for block in final.content if block.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(calls) >= 1
    assert calls[0].name == "get_weather" and set(calls[0].input) == {"city"}  # type: ignore[union-attr, arg-type]
    answer = client.messages.create(model=MODEL, max_tokens=16, tools=[WEATHER], extra_body=GREEDY, messages=[  # type: ignore[list-item]
        *ask, {"role": "assistant", "content": final.content},  # type: ignore[dict-item]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,  # type: ignore[union-attr]
                                      "content": "Sunny, 22 degrees"}]}])
    assert answer.usage.input_tokens > final.usage.input_tokens and answer.content


def test_tool_choice_none_hides_the_tools(client: anthropic.Anthropic) -> None:
    ask: Any = [{"role": "user", "content": CALL_PROMPT}]
    message = client.messages.create(model=MODEL, max_tokens=48, messages=ask, tools=[WEATHER],  # type: ignore[list-item]
                                     tool_choice={"type": "none"}, extra_body=GREEDY)
    offered = client.messages.count_tokens(model=MODEL, messages=ask, tools=[WEATHER])  # type: ignore[list-item]
    assert message.stop_reason != "tool_use" and all(block.type == "text" for block in message.content)
    assert message.usage.input_tokens < offered.input_tokens  # the tools were not in the prompt


def test_a_key_is_taken_from_x_api_key_or_bearer(server: LiveServer) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=1, messages=HELLO)
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with server.client() as http:
        assert http.post("/v1/messages", json={"model": MODEL, "max_tokens": 1, "messages": HELLO}).status_code == 401
        assert http.get("/api/tags", headers={"x-api-key": KEY}).status_code == 200
    bearer = anthropic.Anthropic(base_url=server.url, auth_token=KEY, max_retries=0, timeout=300)
    assert bearer.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens > 0


def test_reasoning_streams_as_a_thinking_block(client: anthropic.Anthropic, server: LiveServer) -> None:
    with server.client(headers={"x-api-key": KEY}) as http:
        created = http.post("/api/create", json={"model": "thinker", "from": MODEL, "template": THINKING_CHATML,
                                                 "stream": False})
    assert created.status_code == 200, created.text
    with client.messages.stream(model="thinker", max_tokens=6, messages=HELLO, extra_body=GREEDY,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds  # the SDK's event for a thinking_delta
    assert final.content[0].type == "thinking" and final.content[0].thinking.strip()  # type: ignore[union-attr]
    whole = client.messages.create(model="thinker", max_tokens=6, messages=HELLO, extra_body=GREEDY,
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    assert whole.content[0].type == "thinking" and whole.content[0].thinking.strip()  # type: ignore[union-attr]
