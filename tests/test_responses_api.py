"""OpenAI's Responses API, driven by the real `openai` SDK and LangChain against a live server; and the store
of recent responses that serves previous_response_id."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI

from ollama_py.api import responses
from ollama_py.server.response_store import ResponseStore
from tests.server_harness import MODEL, THINKING_CHATML, LiveServer

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                          "required": ["city"]}}
# Shown the call it should make, the default model writes it in its trained format (tests/test_default_model_tools.py).
CALL_PROMPT = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call> '
               "Repeat exactly the tool call above.")
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_create_answers_with_output_text_and_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Hello!", instructions="You are kind.",
                                       max_output_tokens=6, temperature=0)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == MODEL
    assert [item.type for item in response.output] == ["message"] and response.output_text.strip()
    assert response.instructions == "You are kind." and response.temperature == 0
    # "Hello!" is answered in more than six tokens: cut short, as OpenAI reports it.
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 6
    assert response.usage.total_tokens == response.usage.input_tokens + 6 and response.usage.input_tokens > 0


def test_a_stream_numbers_its_events_in_openais_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Hello!", max_output_tokens=6, temperature=0,
                                          stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    final = events[-1].response  # type: ignore[union-attr]
    assert text.strip() and final.output_text == text and final.usage.output_tokens == 6


def test_the_sdk_stream_helper_gets_the_completed_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Hi", max_output_tokens=64, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas) and final.output_text.strip()


def test_a_function_call_round_trip(client: openai.OpenAI) -> None:
    ask: Any = [{"role": "user", "content": CALL_PROMPT}]
    called = client.responses.create(model=MODEL, input=ask, tools=[WEATHER], max_output_tokens=48,  # type: ignore[list-item]
                                     temperature=0)
    calls = [item for item in called.output if item.type == "function_call"]
    assert called.status == "completed" and calls
    assert calls[0].name == "get_weather" and set(json.loads(calls[0].arguments)) == {"city"}
    result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 22 degrees"}
    resent = client.responses.create(model=MODEL, input=[*ask, *called.output, result],  # type: ignore[list-item]
                                     tools=[WEATHER], max_output_tokens=12, temperature=0)  # type: ignore[list-item]
    continued = client.responses.create(model=MODEL, previous_response_id=called.id, input=[result],  # type: ignore[list-item]
                                        tools=[WEATHER], max_output_tokens=12, temperature=0)  # type: ignore[list-item]
    assert resent.output_text.strip() and continued.output_text.strip()
    # The stored conversation is the one the client would have sent: the same prompt, token for token.
    assert resent.usage.input_tokens == continued.usage.input_tokens > called.usage.input_tokens  # type: ignore[union-attr]


def test_a_streamed_function_call_has_its_argument_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input=[{"role": "user", "content": CALL_PROMPT}],
                                          tools=[WEATHER], max_output_tokens=48, temperature=0,  # type: ignore[list-item]
                                          stream=True))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.name == "get_weather" and set(json.loads(done.arguments)) == {"city"}  # type: ignore[union-attr]


def test_tool_choice_is_honoured(client: openai.OpenAI, server: LiveServer) -> None:
    ask: Any = [{"role": "user", "content": CALL_PROMPT}]
    hidden = client.responses.create(model=MODEL, input=ask, tools=[WEATHER], tool_choice="none",  # type: ignore[list-item]
                                     max_output_tokens=48, temperature=0)
    assert all(item.type != "function_call" for item in hidden.output)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input=ask, tools=[WEATHER],  # type: ignore[list-item]
                                tool_choice={"type": "function", "name": "nope"})
    assert "no tool named 'nope'" in info.value.message


def test_a_json_schema_format_gives_a_valid_answer(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Give a person as JSON.", max_output_tokens=60,
                                       temperature=0, text={"format": {"type": "json_schema", "name": "person",
                                                                       "schema": PERSON, "strict": True}})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), PERSON)
    assert response.text is not None and response.text.format.type == "json_schema"


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=10, temperature=0)
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=10, temperature=0)
    assert second.previous_response_id == first.id
    stateless = client.responses.create(model=MODEL, max_output_tokens=10, temperature=0, input=[
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert second.usage.input_tokens == stateless.usage.input_tokens  # type: ignore[union-attr]
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens  # type: ignore[union-attr]
    kept = client.responses.retrieve(first.id)
    assert kept.id == first.id and kept.output_text == first.output_text and kept.usage == first.usage


def test_deleted_unknown_and_unstored_responses_are_404(client: openai.OpenAI) -> None:
    kept = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, temperature=0)
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, input="Hi", previous_response_id=kept.id)
    assert f"Previous response with id '{kept.id}' not found." in info.value.message
    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, temperature=0, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="Hi")
    assert missing.value.body["type"] == "not_found_error"  # type: ignore[index]


def test_bad_input_is_a_400_naming_it(http: httpx.Client) -> None:
    no_role = http.post("/v1/responses", json={"model": MODEL, "input": [{"type": "message", "content": "hi"}]})
    assert no_role.status_code == 400 and "role" in no_role.json()["error"]["message"]
    builtin = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]})
    assert builtin.status_code == 400 and "tools[0]" in builtin.json()["error"]["message"]
    remote = http.post("/v1/responses", json={"model": MODEL, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/cat.png"}]}]})
    assert remote.status_code == 400 and "input[0].content[0].image_url" in remote.json()["error"]["message"]


def test_langchain_responses_mode_invokes_and_streams(server: LiveServer) -> None:
    llm = ChatOpenAI(model=MODEL, base_url=server.url + "/v1", api_key="unused",  # type: ignore[arg-type]
                     use_responses_api=True, max_tokens=64, temperature=0, max_retries=0)
    answer = llm.invoke("Hi")
    assert answer.text.strip() and answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] > 0
    streamed = "".join(chunk.text for chunk in llm.stream("Hi"))
    assert streamed == answer.text


def test_reasoning_comes_back_as_a_reasoning_item(client: openai.OpenAI, http: httpx.Client) -> None:
    created = http.post("/api/create", json={"model": "thinker", "from": MODEL, "template": THINKING_CHATML,
                                             "stream": False})
    assert created.status_code == 200, created.text
    events = list(client.responses.create(model="thinker", input="Hello!", max_output_tokens=6, temperature=0,
                                          reasoning={"effort": "low"}, stream=True))
    kinds = [e.type for e in events]
    assert "response.reasoning_summary_text.delta" in kinds
    final = events[-1].response  # type: ignore[union-attr]
    reasoning = [item for item in final.output if item.type == "reasoning"]
    assert reasoning and reasoning[0].summary[0].text.strip()
    # Sent back, the reasoning is the assistant turn's: the follow-up reads it (it is longer than without).
    follow = [{"role": "user", "content": "Hello!"}, *final.output, {"role": "user", "content": "And?"}]
    with_it = client.responses.create(model="thinker", input=follow, max_output_tokens=1, temperature=0,  # type: ignore[arg-type]
                                      reasoning={"effort": "none"})
    without = client.responses.create(model="thinker", input=[follow[0], follow[-1]], max_output_tokens=1,  # type: ignore[list-item]
                                      temperature=0, reasoning={"effort": "none"})
    assert with_it.usage.input_tokens > without.usage.input_tokens  # type: ignore[union-attr]


def _response(response_id: str, text: str) -> responses.Response:
    return responses.Response(id=response_id, created_at=0, status="completed", model=MODEL, store=True,
                              temperature=1.0, top_p=1.0, output=[responses.OutputMessage(
                                  id="msg_1", status="completed", content=[responses.OutputText(text=text)])])


def test_the_store_is_bounded_by_count_bytes_and_age() -> None:
    now = [0.0]
    turn = ({"role": "user", "content": "hi"},)
    by_count = ResponseStore(max_count=2, max_bytes=1 << 20, max_age=60, clock=lambda: now[0])
    for i in range(3):
        assert by_count.put(_response(f"r{i}", "x"), turn)
    assert len(by_count) == 2 and by_count.get("r0") is None and by_count.get("r2") is not None
    by_bytes = ResponseStore(max_count=100, max_bytes=1 << 20, max_age=60, clock=lambda: now[0])
    by_bytes.put(_response("a", "x" * 100), turn)
    size = by_bytes.bytes
    by_bytes.max_bytes = 2 * size + size // 2
    by_bytes.put(_response("b", "x" * 100), turn)
    by_bytes.put(_response("c", "x" * 100), turn)
    assert by_bytes.get("a") is None and by_bytes.get("c") is not None and by_bytes.bytes == 2 * size
    assert not by_bytes.put(_response("huge", "x" * (3 * size)), turn)  # larger than the whole budget
    by_age = ResponseStore(max_count=100, max_bytes=1 << 20, max_age=60, clock=lambda: now[0])
    by_age.put(_response("old", "x"), turn)
    now[0] = 30.0
    by_age.put(_response("new", "x"), turn)
    now[0] = 61.0
    assert by_age.get("old") is None and by_age.get("new") is not None
    assert ResponseStore(max_count=0, max_bytes=1 << 20, max_age=60).put(_response("none", "x"), turn) is False
