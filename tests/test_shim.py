"""Our C shim over llama.cpp's common/: grammars, chat templates, output parsing."""

from __future__ import annotations

import json

import jinja2
import jsonschema
import pytest

from ollama_py.llama.context import Context
from ollama_py.llama.model import Model
from ollama_py.llama.oneshot import generate_text
from ollama_py.llama.sampler import Grammar, SamplerChain, SamplerConfig
from ollama_py.llama.shim import ChatTemplates, ShimError, json_schema_to_grammar

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "address"],
    "additionalProperties": False,
}

# ChatML with a Hermes-style tools block, the shape Qwen2.5 and Hermes use.
HERMES_TEMPLATE = """
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}You may call one or more functions. Function signatures are within <tools></tools>:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
For each call, return a JSON object with the function name and arguments within <tool_call></tool_call> tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
{%- if not (message.role == 'system') %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}{% for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Hi! What's 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]


def test_schema_grammar_constrains_generation_to_valid_json(model: Model, ctx: Context) -> None:
    grammar = json_schema_to_grammar(PERSON_SCHEMA)
    assert "root ::=" in grammar
    prompt = model.vocab.tokenize(
        "<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n", parse_special=True)
    for seed in (1, 2, 3):
        config = SamplerConfig(temperature=1.0, seed=seed, grammar=Grammar(gbnf=grammar))
        with SamplerChain(model.vocab, config) as sampler:
            text = "".join(generate_text(ctx, sampler, prompt, 400))
        document = json.loads(text)
        jsonschema.validate(document, PERSON_SCHEMA)


def test_bad_schema_is_a_clear_error() -> None:
    with pytest.raises(ShimError):
        json_schema_to_grammar({"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}})


def test_model_template_renders_as_its_own_jinja(model: Model) -> None:
    source = model.chat_template()
    assert source
    expected = jinja2.Environment().from_string(source).render(messages=CONVERSATION, add_generation_prompt=True)
    with ChatTemplates(model) as templates:
        applied = templates.apply(CONVERSATION)
    assert applied.prompt == expected
    assert applied.prompt.endswith("<|im_start|>assistant\n")


def test_hermes_tool_call_is_split_from_text(model: Model) -> None:
    with ChatTemplates(model, HERMES_TEMPLATE) as templates:
        applied = templates.apply([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL])
        assert "<tools>" in applied.prompt and "get_weather" in applied.prompt
        assert applied.grammar
        raw = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        parsed = applied.parse(raw)
    assert len(parsed.tool_calls) == 1
    call = parsed.tool_calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert parsed.content.strip() == "Let me check."


def test_plain_text_parses_as_content(model: Model) -> None:
    with ChatTemplates(model) as templates:
        applied = templates.apply(CONVERSATION)
        parsed = applied.parse("Six.")
    assert parsed.content == "Six." and parsed.tool_calls == () and parsed.reasoning == ""


def test_bad_messages_are_a_clear_error(model: Model) -> None:
    with ChatTemplates(model) as templates, pytest.raises(ShimError):
        templates.apply([{"content": "no role"}])
