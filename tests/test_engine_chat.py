"""Chat through the runner: templates, structured output, tool calls, turns, on the real model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import msgspec
import pytest

from ollama_py.engine.chat import ChatDelta, ChatDone, ChatFormatter, ChatRequest, PreparedChat, chat
from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import DoneReason, PromptTooLong, Sampling
from ollama_py.llama.model import Model
from tests.test_shim import HERMES_TEMPLATE, PERSON_SCHEMA, WEATHER_TOOL

SCHEMAS: list[dict[str, Any]] = [
    PERSON_SCHEMA,
    {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
     "additionalProperties": False},
    {"type": "object", "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                                 "minItems": 1, "maxItems": 3}},
     "required": ["colors"], "additionalProperties": False},
    # llama.cpp's converter bounds integers but not numbers, so the bounded score is an integer.
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "score": {"type": "integer", "minimum": 0,
                                                                           "maximum": 10}},
     "required": ["ok", "score"], "additionalProperties": False},
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 15},
                                      "country": {"type": "string", "maxLength": 15}},
     "required": ["city", "country"], "additionalProperties": False},
    {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                                "additionalProperties": False}, "minItems": 2, "maxItems": 4},
]


@pytest.fixture(scope="module")
def runner(model: Model) -> Iterator[Runner]:
    with Runner(model, RunnerOptions(num_ctx=1024, num_parallel=4, num_batch=128)) as r:
        yield r


@pytest.fixture(scope="module")
def formatter(model: Model) -> Iterator[ChatFormatter]:
    f = ChatFormatter(model)
    yield f
    f.close()


async def answer(runner: Runner, prepared: PreparedChat) -> tuple[str, ChatDone]:
    streamed = ""
    async for event in chat(runner, prepared):
        if isinstance(event, ChatDelta):
            streamed += event.content
        else:
            return streamed, event
    raise AssertionError("no ChatDone")


def user(text: str) -> tuple[dict[str, Any], ...]:
    return ({"role": "user", "content": text},)


@pytest.mark.asyncio
async def test_json_schema_format_output_validates(runner: Runner, formatter: ChatFormatter) -> None:
    requests = [ChatRequest(id=f"s{i}", messages=user("Answer in JSON."), format=schema,
                            sampling=Sampling(seed=i, num_predict=300))
                for i, schema in enumerate(SCHEMAS)]
    results = await asyncio.gather(*(answer(runner, formatter.prepare(r, runner.num_ctx)) for r in requests))
    for schema, (streamed, done) in zip(SCHEMAS, results):
        assert done.done.reason is DoneReason.STOP
        assert streamed == done.content
        jsonschema.validate(json.loads(done.content), schema)


@pytest.mark.asyncio
async def test_json_format_gives_an_object(runner: Runner, formatter: ChatFormatter) -> None:
    request = ChatRequest(id="j", messages=user("List two animals as JSON."), format="json",
                          # A penalty on repeats keeps the greedy object from repeating a key past num_predict.
                          sampling=Sampling(temperature=0, num_predict=200, repeat_penalty=1.1))
    _, done = await answer(runner, formatter.prepare(request, runner.num_ctx))
    assert isinstance(json.loads(done.content), dict)


def weather_turns(city: str, n: int) -> list[dict[str, Any]]:
    call = {"type": "function", "id": f"call_{n}",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return [{"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{n}", "content": "12C, cloudy"},
            {"role": "assistant", "content": f"It is 12C and cloudy in {city}."}]


@pytest.mark.asyncio
async def test_tool_call_comes_back_structured(model: Model, runner: Runner) -> None:
    # A 135M model rarely calls tools unprompted; earlier turns show it how.
    history = weather_turns("London", 1) + weather_turns("Berlin", 2) + weather_turns("Rome", 3)
    messages = tuple(history) + ({"role": "user", "content": "What is the weather in Paris?"},)
    hermes = ChatFormatter(model, HERMES_TEMPLATE)
    try:
        assert hermes.supports_tools
        prepared = [hermes.prepare(ChatRequest(id=f"t{seed}", messages=messages, tools=(WEATHER_TOOL,),
                                               sampling=Sampling(seed=seed, num_predict=60)), runner.num_ctx)
                    for seed in range(6)]
        results = await asyncio.gather(*(answer(runner, p) for p in prepared))
    finally:
        hermes.close()
    calls = [done.tool_calls for _, done in results if done.tool_calls]
    assert len(calls) >= 2
    for tool_calls in calls:
        assert len(tool_calls) == 1
        call = tool_calls[0]
        assert call.name == "get_weather"
        assert isinstance(json.loads(call.arguments)["city"], str)
        assert call.id.startswith("call_")
    for streamed, done in results:
        assert "<tool_call>" not in streamed + done.content


@pytest.mark.asyncio
async def test_second_turn_evaluates_only_the_new_messages(runner: Runner, formatter: ChatFormatter) -> None:
    greedy = Sampling(temperature=0, num_predict=100, repeat_penalty=1.1)  # so the first answer ends by itself
    first = ChatRequest(id="a", messages=user("What is the capital of France?"), sampling=greedy)
    prepared = formatter.prepare(first, runner.num_ctx)
    first_prompt = prepared.request.prompt
    _, one = await answer(runner, prepared)
    assert one.done.reason is DoneReason.STOP
    second = ChatRequest(id="b", messages=first.messages + (
        {"role": "assistant", "content": one.content}, {"role": "user", "content": "And of Spain?"}),
        sampling=greedy)
    prepared = formatter.prepare(second, runner.num_ctx)
    _, two = await answer(runner, prepared)
    history = len(first_prompt) + one.done.eval_count
    assert two.done.prompt_eval_count == len(prepared.request.prompt) - history
    assert two.done.prompt_eval_count < 20 < history


@pytest.mark.asyncio
async def test_long_conversation_drops_oldest_turns(model: Model, formatter: ChatFormatter) -> None:
    turns: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(12):
        turns += [{"role": "user", "content": f"Tell me fact number {i} about the ocean."},
                  {"role": "assistant", "content": "The ocean is deep and covers most of the planet. " * 2}]
    turns.append({"role": "user", "content": "Thanks! One more?"})
    request = ChatRequest(id="long", messages=tuple(turns), sampling=Sampling(temperature=0, num_predict=4))
    with pytest.raises(PromptTooLong):
        formatter.prepare(msgspec.structs.replace(request, truncate=False), 256)
    prepared = formatter.prepare(request, 256)
    text = model.vocab.detokenize(list(prepared.request.prompt))
    assert "Be brief." in text and "Thanks! One more?" in text and "fact number 0 " not in text
    assert len(prepared.request.prompt) < 256
    with Runner(model, RunnerOptions(num_ctx=256, num_parallel=1, num_batch=128)) as small:
        _, done = await answer(small, prepared)
    assert done.done.eval_count == 4


def test_what_the_model_cannot_do_is_a_clear_error(formatter: ChatFormatter) -> None:
    with pytest.raises(ValueError, match="does not support tools"):
        formatter.prepare(ChatRequest(id="x", messages=user("hi"), tools=(WEATHER_TOOL,)), 1024)
    with pytest.raises(ValueError, match="does not support thinking"):
        formatter.prepare(ChatRequest(id="x", messages=user("hi"), think=True), 1024)
    with pytest.raises(ValueError, match="does not support images"):
        formatter.prepare(ChatRequest(id="x", messages=({"role": "user", "content": "?", "images": ["AAAA"]},)),
                          1024)
    with pytest.raises(ValueError, match="invalid format"):
        formatter.prepare(ChatRequest(id="x", messages=user("hi"), format="yaml"), 1024)


@pytest.mark.asyncio
async def test_generate_raw_and_templated(runner: Runner, formatter: ChatFormatter) -> None:
    base = ChatRequest(id="g", messages=(), sampling=Sampling(temperature=0, num_predict=12))
    raw = formatter.prepare_generate(base, "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                           "<|im_start|>assistant\n", raw=True, num_ctx=runner.num_ctx)
    templated = formatter.prepare_generate(base, "What is the capital of France?", system="Be concise.",
                                           num_ctx=runner.num_ctx)
    _, raw_done = await answer(runner, raw)
    _, templated_done = await answer(runner, templated)
    assert "Paris" in raw_done.content and "Paris" in templated_done.content
    with pytest.raises(ValueError, match="raw"):
        formatter.prepare_generate(base, "hi", system="x", raw=True, num_ctx=runner.num_ctx)
