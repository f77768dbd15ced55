"""Chat with a Modelfile TEMPLATE in Ollama's Go syntax, on the real model: the prompt the model sees is the
template's, answers are read with the template's tags, and what the template cannot do is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from ollama_py.engine.chat import ChatDelta, ChatDone, ChatFormatter, ChatRequest, PreparedChat, chat
from ollama_py.engine.goprompt import PromptTemplate, RenderedPrompt
from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import DoneReason, PromptTooLong, Sampling
from ollama_py.llama.model import Model
from ollama_py.llama.shim import ChatApplied
from ollama_py.store.create import CHATML_TEMPLATE

# Ollama's own ChatML template (template/chatml.gotmpl), which SmolLM2 was trained on.
OLLAMA_CHATML = (
    "{{- if .Messages }}\n"
    "{{- if .System }}<|im_start|>system\n"
    "{{ .System }}<|im_end|>\n"
    "{{ end }}\n"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
    "{{ else }}\n"
    "{{ if .System }}<|im_start|>system\n"
    "{{ .System }}<|im_end|>\n"
    "{{ end }}{{ if .Prompt }}<|im_start|>user\n"
    "{{ .Prompt }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
    "{{ .Response }}<|im_end|>\n"
    "{{- end }}"
)
# A legacy template (no .Messages), as older Modelfiles write them: Ollama runs it once per exchange.
LEGACY_CHATML = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
# Qwen 2.5's tool-calling template from Ollama (tools/testdata/qwen2.5.gotmpl), fill-in-the-middle left out.
QWEN_TOOLS = (
    "{{- if or .System .Tools }}<|im_start|>system\n"
    "{{- if .System }}\n{{ .System }}\n{{- end }}\n"
    "{{- if .Tools }}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{{- range .Tools }}\n{\"type\": \"function\", \"function\": {{ .Function }}}\n{{- end }}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    "XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>\n"
    "{{- end }}<|im_end|>\n{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
    "{{- if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n"
    "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n"
    "{{ if .Content }}{{ .Content }}\n"
    "{{- else if .ToolCalls }}<tool_call>\n"
    "{{ range .ToolCalls }}{\"name\": \"{{ .Function.Name }}\", \"arguments\": {{ .Function.Arguments }}}\n"
    "{{ end }}</tool_call>\n"
    "{{- end }}{{ if not $last }}<|im_end|>\n{{ end }}\n"
    "{{- else if eq .Role \"tool\" }}<|im_start|>user\n<tool_response>\n{{ .Content }}\n</tool_response><|im_end|>\n"
    "{{ end }}\n"
    "{{- if and (ne .Role \"assistant\") $last }}<|im_start|>assistant\n{{ end }}\n"
    "{{- end }}"
)
# ChatML with a reasoning block, written the way thinking models' templates are: the tags around .Thinking
# tell Ollama how to read answers, and .Think opens the block for the model.
THINKING_CHATML = (
    "{{- range $i, $m := .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
    "{{ if $.Think }}<think>\n{{ end }}"
)
FIM = "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>{{ else }}{{ .Prompt }}{{ end }}"
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}
GREEDY = Sampling(temperature=0, num_predict=40)


@pytest.fixture(scope="module")
def runner(model: Model) -> Iterator[Runner]:
    with Runner(model, RunnerOptions(num_ctx=1024, num_parallel=4, num_batch=128)) as r:
        yield r


@pytest.fixture(scope="module")
def formatter(model: Model) -> Iterator[ChatFormatter]:
    f = ChatFormatter(model)
    yield f
    f.close()


async def answer(runner: Runner, prepared: PreparedChat) -> tuple[str, str, ChatDone]:
    content = thinking = ""
    async for event in chat(runner, prepared):
        if isinstance(event, ChatDelta):
            content += event.content
            thinking += event.thinking
        else:
            return content, thinking, event
    raise AssertionError("no ChatDone")


def ask(question: str, **fields: Any) -> ChatRequest:
    return ChatRequest(id="q", messages=({"role": "user", "content": question},), sampling=GREEDY, **fields)


def seen(model: Model, prepared: PreparedChat) -> str:
    """The prompt as the model sees it."""
    return model.vocab.detokenize(list(prepared.request.prompt), unparse_special=True)


@pytest.mark.asyncio
async def test_a_go_template_is_what_the_model_sees_and_it_answers(model: Model, runner: Runner,
                                                                   formatter: ChatFormatter) -> None:
    conversation = ({"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"})
    prepared = formatter.prepare(ChatRequest(id="go", messages=conversation, sampling=GREEDY,
                                             template=OLLAMA_CHATML), runner.num_ctx)
    assert isinstance(prepared.applied, RenderedPrompt)
    # Ollama's chatml writes the system prompt twice: once as .System, once as the first of .Messages.
    assert seen(model, prepared).endswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    streamed, _, done = await answer(runner, prepared)
    assert done.done.reason is DoneReason.STOP
    assert "Paris" in done.content and streamed == done.content


@pytest.mark.asyncio
async def test_a_legacy_template_renders_each_exchange(model: Model, runner: Runner,
                                                       formatter: ChatFormatter) -> None:
    turns = ({"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
             {"role": "user", "content": "What is the capital of France?"})
    prepared = formatter.prepare(ChatRequest(id="legacy", messages=turns, sampling=GREEDY, template=LEGACY_CHATML),
                                 runner.num_ctx)
    assert seen(model, prepared).endswith(
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    _, _, done = await answer(runner, prepared)
    assert "Paris" in done.content


def test_the_template_derived_at_import_keeps_the_models_own(formatter: ChatFormatter) -> None:
    own = formatter.prepare(ask("Hi"), 1024)
    derived = formatter.prepare(ask("Hi", template=CHATML_TEMPLATE), 1024)
    try:
        assert isinstance(derived.applied, ChatApplied)
        assert derived.request.prompt == own.request.prompt
    finally:
        for prepared in (own, derived):
            assert prepared.applied is not None
            prepared.applied.close()


def weather_turns(city: str, n: int) -> list[dict[str, Any]]:
    call = {"type": "function", "id": f"call_{n}",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return [{"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"call_{n}", "content": "12C, cloudy"},
            {"role": "assistant", "content": f"It is 12C and cloudy in {city}."}]


@pytest.mark.asyncio
async def test_tool_calls_come_back_structured_through_a_go_template(model: Model, runner: Runner,
                                                                     formatter: ChatFormatter) -> None:
    # A 135M model rarely calls tools unprompted; five earlier turns show it how (greedy, so always alike).
    history = [turn for n, city in enumerate(("London", "Berlin", "Rome", "Madrid", "Vienna"))
               for turn in weather_turns(city, n)]
    prepared = {city: formatter.prepare(ChatRequest(
        id=city, messages=(*history, {"role": "user", "content": f"What is the weather in {city}?"}),
        tools=(WEATHER_TOOL,), template=QWEN_TOOLS, sampling=GREEDY), runner.num_ctx) for city in ("Paris", "Tokyo")}
    assert '{"name": "get_weather", "arguments": {"city":"Rome"}}' in seen(model, prepared["Paris"])
    results = dict(zip(prepared, await asyncio.gather(*(answer(runner, p) for p in prepared.values()))))
    for city, (streamed, _, done) in results.items():
        assert [(c.name, json.loads(c.arguments)) for c in done.tool_calls] == [("get_weather", {"city": city})]
        assert done.tool_calls[0].id.startswith("call_")
        assert "<tool_call>" not in streamed + done.content


@pytest.mark.asyncio
async def test_a_thinking_template_returns_the_reasoning_apart(model: Model, runner: Runner,
                                                               formatter: ChatFormatter) -> None:
    thinking = formatter.prepare(ask("What is 2 + 2?", template=THINKING_CHATML), runner.num_ctx)
    assert seen(model, thinking).endswith("<|im_start|>assistant\n<think>\n")
    content, reasoning, done = await answer(runner, thinking)
    assert done.thinking and reasoning == done.thinking
    assert "<think>" not in content + done.content and "</think>" not in done.thinking
    plain = formatter.prepare(ask("What is 2 + 2?", template=THINKING_CHATML, think=False), runner.num_ctx)
    assert seen(model, plain).endswith("<|im_start|>assistant\n")
    _, _, done = await answer(runner, plain)
    assert done.thinking == "" and done.content


@pytest.mark.asyncio
async def test_generate_through_a_go_template(model: Model, runner: Runner, formatter: ChatFormatter) -> None:
    base = ChatRequest(id="g", messages=(), sampling=GREEDY, template=OLLAMA_CHATML)
    prepared = formatter.prepare_generate(base, "What is the capital of France?", system="Be concise.",
                                          num_ctx=runner.num_ctx)
    assert seen(model, prepared).endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>system\nBe concise.<|im_end|>\n" in seen(model, prepared)
    _, _, done = await answer(runner, prepared)
    assert "Paris" in done.content


def test_fill_in_the_middle_needs_a_template_that_takes_a_suffix(model: Model, formatter: ChatFormatter) -> None:
    base = ChatRequest(id="fim", messages=(), sampling=GREEDY, template=FIM)
    prepared = formatter.prepare_generate(base, "def add(a, b):\n", suffix="\n    return c", num_ctx=1024)
    assert seen(model, prepared).endswith("<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c<|fim_middle|>")
    for template in ("", OLLAMA_CHATML):
        with pytest.raises(ValueError, match="does not support insert"):
            formatter.prepare_generate(msgspec.structs.replace(base, template=template), "x", suffix="y", num_ctx=1024)


def test_long_conversations_drop_their_oldest_turns(model: Model, formatter: ChatFormatter) -> None:
    turns: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(12):
        turns += [{"role": "user", "content": f"Tell me fact number {i} about the ocean."},
                  {"role": "assistant", "content": "The ocean is deep and covers most of the planet. " * 2}]
    turns.append({"role": "user", "content": "Thanks! One more?"})
    request = ChatRequest(id="long", messages=tuple(turns), template=OLLAMA_CHATML)
    with pytest.raises(PromptTooLong):
        formatter.prepare(msgspec.structs.replace(request, truncate=False), 256)
    prepared = formatter.prepare(request, 256)
    text = seen(model, prepared)
    assert len(prepared.request.prompt) < 256
    assert "Be brief." in text and "Thanks! One more?" in text and "fact number 0 " not in text


def test_dropping_turns_never_leaves_a_tool_result_without_its_call(formatter: ChatFormatter) -> None:
    history = [turn for n, city in enumerate(("London", "Berlin", "Rome", "Madrid", "Vienna", "Oslo"))
               for turn in weather_turns(city, n)]
    request = ChatRequest(id="tools", messages=(*history, {"role": "user", "content": "And in Paris?"}),
                          tools=(WEATHER_TOOL,), template=QWEN_TOOLS)
    full = len(formatter.prepare(request, 4096).request.prompt)
    for num_ctx in range(full - 120, full, 8):
        prompt = formatter.prepare(request, num_ctx).applied
        assert isinstance(prompt, RenderedPrompt) and "And in Paris?" in prompt.prompt
        first_turn = prompt.prompt.split("</tools>", 1)[1].split("<|im_start|>", 2)[1]
        assert not first_turn.startswith("user\n<tool_response>"), first_turn


def test_what_a_go_template_cannot_do_is_a_clear_error(formatter: ChatFormatter) -> None:
    with pytest.raises(ValueError, match="does not support tools"):
        formatter.prepare(ask("hi", template=OLLAMA_CHATML, tools=(WEATHER_TOOL,)), 1024)
    with pytest.raises(ValueError, match="does not support thinking"):
        formatter.prepare(ask("hi", template=OLLAMA_CHATML, think=True), 1024)
    with pytest.raises(ValueError, match=r"not valid: template: line 2, column 4: .*\{\{if\}\} has no matching"):
        formatter.prepare(ask("hi", template="Hi\n{{ if .System }}unclosed"), 1024)
    with pytest.raises(ValueError, match=r"cannot render .* line 1, column 25: .*can't evaluate field Name"):
        formatter.prepare(ask("hi", template="{{ range .Messages }}{{ .Name }}{{ end }}"), 1024)


def test_capabilities_follow_what_the_template_mentions() -> None:
    assert not PromptTemplate(OLLAMA_CHATML).supports_tools
    assert PromptTemplate(QWEN_TOOLS).supports_tools and PromptTemplate(QWEN_TOOLS).tool_tag == "<tool_call>"
    assert PromptTemplate(THINKING_CHATML).thinking_tags == ("<think>", "</think>")
    assert PromptTemplate(FIM).supports_insert
