"""Real Ollama templates rendered as Ollama renders them, and answers read as Ollama reads them.

The templates are Ollama's own (template/*.gotmpl and server/testdata/tools/*.gotmpl in its repository,
as `ollama show --template` prints them for those models; Command R's long preamble is shortened).
Each expected prompt was worked out from the template by Go's rules and checked against a Go program
doing what Ollama's template.Execute does (go1.19 text/template, run by hand outside the suite).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ollama_py.engine.goprompt import PromptTemplate, RenderedPrompt, parse_template
from ollama_py.engine.gotemplate import TemplateError

LLAMA3 = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n"
    "\n"
    "{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n"
    "\n"
    "{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n"
    "\n"
    "{{ .Response }}<|eot_id|>"
)

PHI3 = (
    "{{ if .System }}<|system|>\n"
    "{{ .System }}<|end|>\n"
    "{{ end }}{{ if .Prompt }}<|user|>\n"
    "{{ .Prompt }}<|end|>\n"
    "{{ end }}<|assistant|>\n"
    "{{ .Response }}<|end|>"
)

MISTRAL_INSTRUCT = (
    "{{- if .Messages }}\n"
    "{{- range $index, $_ := .Messages }}\n"
    "{{- if eq .Role \"user\" }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}\n"
    "{{ end }}{{ .Content }}\n"
    "{{- else if eq .Role \"assistant\" }}[/INST] {{ .Content }}</s>\n"
    "{{- end }}\n"
    "{{- end }}[/INST]\n"
    "{{- else -}}\n"
    "[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}[/INST] {{ .Response }}</s>\n"
    "{{- end -}}"
)

GEMMA3 = (
    "{{- $system := .System }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    "{{- if eq .Role \"user\" }}<start_of_turn>user\n"
    "{{- if and (eq $i 1) $system }}\n"
    "{{ $system }}\n"
    "{{- end }}\n"
    "{{ .Content }}<end_of_turn>\n"
    "{{ else if eq .Role \"assistant\" }}<start_of_turn>model\n"
    "{{ .Content }}<end_of_turn>\n"
    "{{ end }}\n"
    "{{- if $last }}<start_of_turn>model\n"
    "{{ end }}\n"
    "{{- end }}\n"
)

CHATML = (
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

QWEN25 = (
    "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>\n"
    "{{- else if .Messages }}\n"
    "{{- if or .System .Tools }}<|im_start|>system\n"
    "{{- if .System }}\n"
    "{{ .System }}\n"
    "{{- end }}\n"
    "{{- if .Tools }}\n"
    "\n"
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    "{{- range .Tools }}\n"
    "{\"type\": \"function\", \"function\": {{ .Function }}}\n"
    "{{- end }}\n"
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    "<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call>\n"
    "{{- end }}<|im_end|>\n"
    "{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 -}}\n"
    "{{- if eq .Role \"user\" }}<|im_start|>user\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ else if eq .Role \"assistant\" }}<|im_start|>assistant\n"
    "{{ if .Content }}{{ .Content }}\n"
    "{{- else if .ToolCalls }}<tool_call>\n"
    "{{ range .ToolCalls }}{\"name\": \"{{ .Function.Name }}\", \"arguments\": {{ .Function.Arguments }}}\n"
    "{{ end }}</tool_call>\n"
    "{{- end }}{{ if not $last }}<|im_end|>\n"
    "{{ end }}\n"
    "{{- else if eq .Role \"tool\" }}<|im_start|>user\n"
    "<tool_response>\n"
    "{{ .Content }}\n"
    "</tool_response><|im_end|>\n"
    "{{ end }}\n"
    "{{- if and (ne .Role \"assistant\") $last }}<|im_start|>assistant\n"
    "{{ end }}\n"
    "{{- end }}\n"
    "{{- else }}\n"
    "{{- if .System }}<|im_start|>system\n"
    "{{ .System }}<|im_end|>\n"
    "{{ end }}{{ if .Prompt }}<|im_start|>user\n"
    "{{ .Prompt }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
    "{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"
)

MISTRAL_TOOLS = (
    "{{- range $index, $_ := .Messages }}\n"
    "{{- if eq .Role \"user\" }}\n"
    "{{- if and (eq (len (slice $.Messages $index)) 1) $.Tools }}[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]\n"
    "{{- end }}[INST] {{ if and (eq (len (slice $.Messages $index)) 1) $.System }}{{ $.System }}\n"
    "\n"
    "{{ end }}{{ .Content }}[/INST]\n"
    "{{- else if eq .Role \"assistant\" }}\n"
    "{{- if .Content }} {{ .Content }}</s>\n"
    "{{- else if .ToolCalls }}[TOOL_CALLS] [\n"
    "{{- range .ToolCalls }}{\"name\": \"{{ .Function.Name }}\", \"arguments\": {{ .Function.Arguments }}}\n"
    "{{- end }}]</s>\n"
    "{{- end }}\n"
    "{{- else if eq .Role \"tool\" }}[TOOL_RESULTS] {\"content\": {{ .Content }}}[/TOOL_RESULTS]\n"
    "{{- end }}\n"
    "{{- end }}"
)

DEEPSEEK = (
    "{{- if .System }}{{ .System }}{{ end }}\n"
    "{{- if .Tools }}\n"
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    "{{- range $i, $_ := .Tools }}\n"
    "{{ .Function }}\n"
    "{{- end }}\n"
    "</tools>\n"
    "\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.\n"
    "{{- end }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "  {{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    "  {{- if eq .Role \"user\" -}}\n"
    "    <｜User｜>{{ .Content }}\n"
    "  {{- else if eq .Role \"assistant\" -}}\n"
    "    <｜Assistant｜>\n"
    "    {{- if .ToolCalls -}}\n"
    "      {{ \"\\n\" }}<｜tool▁calls▁begin｜>{{ \"\\n\" }}\n"
    "      {{- range $i, $_ := .ToolCalls -}}\n"
    "        <｜tool▁call▁begin｜>function<｜tool▁sep｜>{{ .Function.Name }}\n"
    "```json\n"
    "{{ .Function.Arguments }}\n"
    "```<｜tool▁call▁end｜>{{ \"\\n\" }}\n"
    "      {{- end -}}\n"
    "      <｜tool▁calls▁end｜><｜end▁of▁sentence｜>\n"
    "    {{- end }}\n"
    "    {{- if and $.IsThinkSet (and $last .Thinking) -}}\n"
    "      <think>\n"
    "        {{ .Thinking }}\n"
    "      </think>\n"
    "    {{- end }}{{ .Content }}{{- if not $last }}<｜end▁of▁sentence｜>{{- end }}\n"
    "  {{- else if eq .Role \"tool\" -}}\n"
    "    {{ \"\\n\" }}<｜tool▁output▁begin｜>{{ .Content }}<｜tool▁output▁end｜>{{ \"\\n\" }}\n"
    "  {{- end }}\n"
    "  {{- if and $last (ne .Role \"assistant\") -}}\n"
    "    <｜Assistant｜>\n"
    "    {{- if and $.IsThinkSet (not $.Think) -}}\n"
    "      <think> </think>\n"
    "    {{ end }}\n"
    "  {{- end -}}\n"
    "{{- end -}}\n"
)

COMMAND_R = (
    "{{- if or .Tools .System }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>\n"
    "{{- if .Tools }}# Safety Preamble\n"
    "\n"
    "{{ if .System }}# User Preamble\n"
    "{{ .System }}\n"
    "{{- end }}\n"
    "\n"
    "## Available Tools\n"
    "Here is a list of tools that you have available to you:\n"
    "{{- range .Tools }}\n"
    "\n"
    "```python\n"
    "def {{ .Function.Name }}(\n"
    "{{- range $name, $property := .Function.Parameters.Properties }}{{ $name }}: {{ $property.Type }}, {{ end }}) -> List[Dict]:\n"
    "    '''{{ .Function.Description }}\n"
    "\n"
    "{{- if .Function.Parameters.Properties }}\n"
    "\n"
    "    Args:\n"
    "{{- range $name, $property := .Function.Parameters.Properties }}\n"
    "        {{ $name }} ({{ $property.Type }}): {{ $property.Description }}\n"
    "{{- end }}\n"
    "{{- end }}\n"
    "    '''\n"
    "    pass\n"
    "```\n"
    "{{- end }}\n"
    "{{- else if .System }}{{ .System }}\n"
    "{{- end }}<|END_OF_TURN_TOKEN|>\n"
    "{{- end }}\n"
    "{{- range .Messages }}\n"
    "{{- if eq .Role \"system\" }}\n"
    "{{- continue }}\n"
    "{{- end }}<|START_OF_TURN_TOKEN|>\n"
    "{{- if eq .Role \"user\" }}<|USER_TOKEN|>{{ .Content }}\n"
    "{{- else if eq .Role \"assistant\" }}<|CHATBOT_TOKEN|>\n"
    "{{- if .Content }}{{ .Content }}\n"
    "{{- else if .ToolCalls }}\n"
    "Action: ```json\n"
    "[\n"
    "{{- range .ToolCalls }}\n"
    "    {\n"
    "        \"tool_name\": \"{{ .Function.Name }}\",\n"
    "        \"parameters\": {{ json .Function.Arguments }}\n"
    "    }\n"
    "{{- end }}\n"
    "]```\n"
    "{{ continue }}\n"
    "{{ end }}\n"
    "{{- else if eq .Role \"tool\" }}<|SYSTEM_TOKEN|><results>\n"
    "{{ .Content }}</results>\n"
    "{{- end }}<|END_OF_TURN_TOKEN|>\n"
    "{{- end }}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>\n"
)

LLAMA32 = (
    "<|start_header_id|>system<|end_header_id|>\n"
    "\n"
    "Cutting Knowledge Date: December 2023\n"
    "\n"
    "{{ if .System }}{{ .System }}\n"
    "{{- end }}\n"
    "{{- if .Tools }}When you receive a tool call response, use the output to format an answer to the orginal user question.\n"
    "\n"
    "You are a helpful assistant with tool calling capabilities.\n"
    "{{- end }}<|eot_id|>\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    "{{- if eq .Role \"user\" }}<|start_header_id|>user<|end_header_id|>\n"
    "{{- if and $.Tools $last }}\n"
    "\n"
    "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n"
    "\n"
    "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}. Do not use variables.\n"
    "\n"
    "{{ range $.Tools }}\n"
    "{{- . }}\n"
    "{{ end }}\n"
    "{{ .Content }}<|eot_id|>\n"
    "{{- else }}\n"
    "\n"
    "{{ .Content }}<|eot_id|>\n"
    "{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n"
    "\n"
    "{{ end }}\n"
    "{{- else if eq .Role \"assistant\" }}<|start_header_id|>assistant<|end_header_id|>\n"
    "{{- if .ToolCalls }}\n"
    "{{ range .ToolCalls }}\n"
    "{\"name\": \"{{ .Function.Name }}\", \"parameters\": {{ .Function.Arguments }}}{{ end }}\n"
    "{{- else }}\n"
    "\n"
    "{{ .Content }}\n"
    "{{- end }}{{ if not $last }}<|eot_id|>{{ end }}\n"
    "{{- else if eq .Role \"tool\" }}<|start_header_id|>ipython<|end_header_id|>\n"
    "\n"
    "{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n"
    "\n"
    "{{ end }}\n"
    "{{- end }}\n"
    "{{- end }}"
)

HELLO = [{"role": "user", "content": "Hello, how are you?"}]
SYSTEM_USER_ASSISTANT_USER = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm doing great. How can I help you today?"},
    {"role": "user", "content": "I'd like to show off how chat templating works!"},
]
# OpenAI-style, as the engine receives chats: arguments as JSON text, a tool result without a name.
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}]},
    {"role": "tool", "content": "12C"},
    {"role": "user", "content": "And Rome?"},
]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now>",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "days": {"type": "integer", "description": "Days ahead"}}}}}
QWEN_TOOLS_SYSTEM = (
    "<|im_start|>system\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name":"get_weather","description":"Weather \\u003cnow\\u003e",'
    '"parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string"},'
    '"days":{"type":"integer","description":"Days ahead"}}}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')


@pytest.mark.parametrize(("template", "messages", "expected"), [
    pytest.param(LLAMA3, SYSTEM_USER_ASSISTANT_USER, (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello, how are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nI'm doing great. How can I help you today?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nI'd like to show off how chat templating works!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"), id="llama3-legacy-one-run-per-exchange"),
    pytest.param(PHI3, SYSTEM_USER_ASSISTANT_USER, (
        "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello, how are you?<|end|>\n"
        "<|assistant|>\nI'm doing great. How can I help you today?<|end|>"
        "<|user|>\nI'd like to show off how chat templating works!<|end|>\n<|assistant|>\n"), id="phi3-legacy"),
    pytest.param(PHI3, HELLO, "<|user|>\nHello, how are you?<|end|>\n<|assistant|>\n", id="phi3-cut-after-response"),
    pytest.param(MISTRAL_INSTRUCT, SYSTEM_USER_ASSISTANT_USER, (
        "[INST] Hello, how are you?[/INST] I'm doing great. How can I help you today?</s>"
        "[INST] You are a helpful assistant.\nI'd like to show off how chat templating works![/INST]"),
        id="mistral-system-on-the-last-turn"),
    pytest.param(GEMMA3, SYSTEM_USER_ASSISTANT_USER, (
        "<start_of_turn>user\nYou are a helpful assistant.\nHello, how are you?<end_of_turn>\n"
        "<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n"
        "<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n"
        "<start_of_turn>model\n\n"), id="gemma3-variables"),
    pytest.param(CHATML, [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
        {"role": "system", "content": "Be kind."}, {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d é <x>"}], (
        "<|im_start|>system\nBe brief.\n\nBe kind.<|im_end|>\n<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\na\n\nb<|im_end|>\n<|im_start|>system\nBe kind.<|im_end|>\n"
        "<|im_start|>assistant\nc<|im_end|>\n<|im_start|>user\nd é <x><|im_end|>\n<|im_start|>assistant\n"),
        id="chatml-system-joined-and-turns-merged"),
])
def test_real_templates_render_conversations_as_ollama_does(template: str, messages: list[dict[str, Any]],
                                                            expected: str) -> None:
    assert PromptTemplate(template).render(messages) == expected


def test_qwen_template_writes_tools_and_past_calls() -> None:
    prompt = PromptTemplate(QWEN25).render(TOOL_TURNS, [WEATHER])
    assert prompt == QWEN_TOOLS_SYSTEM + (
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city":"Paris","days":2}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n12C\n</tool_response><|im_end|>\n"
        "<|im_start|>user\nAnd Rome?<|im_end|>\n<|im_start|>assistant\n")


def test_mistral_template_prints_the_tool_list_as_json_before_the_last_turn() -> None:
    prompt = PromptTemplate(MISTRAL_TOOLS).render(TOOL_TURNS, [WEATHER])
    assert prompt == (
        '[INST] Weather in Paris?[/INST][TOOL_CALLS] [{"name": "get_weather", "arguments": {"city":"Paris","days":2}}]'
        '</s>[TOOL_RESULTS] {"content": 12C}[/TOOL_RESULTS][AVAILABLE_TOOLS] '
        '[{"type":"function","function":{"name":"get_weather","description":"Weather \\u003cnow\\u003e",'
        '"parameters":{"type":"object","required":["city"],"properties":{"city":{"type":"string"},'
        '"days":{"type":"integer","description":"Days ahead"}}}}}][/AVAILABLE_TOOLS][INST] And Rome?[/INST]')
    assert "AVAILABLE_TOOLS" not in PromptTemplate(MISTRAL_TOOLS).render(TOOL_TURNS)


def test_command_r_ranges_over_tool_properties_in_name_order() -> None:
    prompt = PromptTemplate(COMMAND_R).render(TOOL_TURNS[:1], [WEATHER])
    assert "def get_weather(city: string, days: integer, ) -> List[Dict]:\n    '''Weather <now>\n\n    Args:\n" \
           "        city (string): \n        days (integer): Days ahead\n    '''" in prompt
    assert prompt.endswith("<|USER_TOKEN|>Weather in Paris?<|END_OF_TURN_TOKEN|><|END_OF_TURN_TOKEN|>"
                           "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>\n")


@pytest.mark.parametrize(("think", "tail"), [
    (None, "<｜User｜>q2<｜Assistant｜>"),
    (True, "<｜User｜>q2<｜Assistant｜>"),
    (False, "<｜User｜>q2<｜Assistant｜><think> </think>\n    "),
])
def test_think_reaches_the_template(think: bool | None, tail: str) -> None:
    turns = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "thinking": "hmm"},
             {"role": "user", "content": "q2"}]
    assert PromptTemplate(DEEPSEEK).render(turns, think=think) == "<｜User｜>q1<｜Assistant｜>a1<｜end▁of▁sentence｜>" + tail


def test_fill_in_the_middle_uses_prompt_and_suffix() -> None:
    template = PromptTemplate(QWEN25)
    assert template.supports_insert
    assert template.render([], prompt="def add(a, b):", suffix="return c") == (
        "<|fim_prefix|>def add(a, b):<|fim_suffix|>return c<|fim_middle|>")


@pytest.mark.parametrize(("template", "tools", "insert", "tool_tag", "thinking"), [
    (LLAMA3, False, False, "{", None),
    (CHATML, False, False, "{", None),
    (QWEN25, True, True, "<tool_call>", None),
    (MISTRAL_TOOLS, True, False, "[TOOL_CALLS] [", None),
    (LLAMA32, True, False, "{", None),
    (COMMAND_R, True, False, "Action: ```json\n[", None),
    # its {{ if .ToolCalls }} starts with an action ({{ "\n" }}), where Ollama stops looking for a tag
    (DEEPSEEK, True, False, "{", ("<think>", "</think>")),
])
def test_what_ollama_reads_from_a_template(template: str, tools: bool, insert: bool, tool_tag: str,
                                           thinking: tuple[str, str] | None) -> None:
    parsed = PromptTemplate(template)
    assert (parsed.supports_tools, parsed.supports_insert, parsed.tool_tag, parsed.thinking_tags) == (
        tools, insert, tool_tag, thinking)


def test_a_broken_template_fails_when_it_runs_with_its_place() -> None:
    with pytest.raises(TemplateError, match=r"line 2, column 4: .*can't evaluate field Nope"):
        PromptTemplate("{{ range .Messages }}\n{{ .Nope }}{{ end }}").render(HELLO)
    assert parse_template(QWEN25) is parse_template(QWEN25)


def answer(tag: str = "<tool_call>", *, thinking: tuple[str, str] | None = None, prompt: str = "") -> RenderedPrompt:
    return RenderedPrompt(prompt=prompt, thinking_tags=thinking, tool_tag=tag,
                          tool_names=("get_weather", "get_time"))


def test_a_tagged_tool_call_comes_back_as_a_call() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "days": 1}}\n</tool_call>'
    parsed = answer().parse(text)
    assert parsed.content == "Let me check.\n"
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [("get_weather", {"city": "Rome", "days": 1})]
    streamed = answer().parse(text[:30], partial=True)
    assert streamed.content == "Let me check.\n" and streamed.tool_calls == ()
    assert answer().parse("Let me check.\n<tool_", partial=True).content == "Let me check.\n"


def test_a_call_followed_by_prose_is_still_a_call() -> None:
    # The prose ends in "g", which could start "get_weather" were the answer still growing; it is not.
    text = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>\n\nThe call is a string'
    parsed = answer().parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert parsed.content == ""


def test_mistral_calls_in_a_list_and_arguments_as_text() -> None:
    text = ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
            '{"name": "get_time", "arguments": "{\\"zone\\": \\"CET\\"}"}]')
    parsed = answer("[TOOL_CALLS] [").parse(text)
    assert parsed.content == ""
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "CET"})]


def test_without_a_tag_only_leading_json_naming_a_tool_is_a_call() -> None:
    call = answer("{").parse('{"name": "get_time", "parameters": {"zone": "UTC"}}')
    assert [(c.name, json.loads(c.arguments)) for c in call.tool_calls] == [("get_time", {"zone": "UTC"})]
    prose = answer("{").parse('Use {"name": "get_time"} like this.')
    assert (prose.content, prose.tool_calls) == ('Use {"name": "get_time"} like this.', ())
    plain_json = answer("{").parse('{"answer": 42}')
    assert (plain_json.content, plain_json.tool_calls) == ('{"answer": 42}', ())


def test_a_tag_without_a_usable_call_keeps_the_words() -> None:
    parsed = answer().parse("Sure.<tool_call>I cannot decide</tool_call>")
    assert (parsed.content, parsed.tool_calls) == ("Sure.<tool_call>I cannot decide</tool_call>", ())


def test_thinking_is_split_from_the_answer() -> None:
    tags = ("<think>", "</think>")
    parsed = answer(thinking=tags).parse("<think>\nWeighing it up.\n</think>\n\nIt is 4.")
    assert (parsed.reasoning, parsed.content) == ("Weighing it up.\n", "It is 4.")
    streaming = answer(thinking=tags).parse("<think>Weighing</th", partial=True)
    assert (streaming.reasoning, streaming.content) == ("Weighing", "")
    opened_by_prompt = answer(thinking=tags, prompt="<｜Assistant｜><think>\n").parse("Hmm.</think>Yes.")
    assert (opened_by_prompt.reasoning, opened_by_prompt.content) == ("Hmm.", "Yes.")
    no_thoughts = answer(thinking=tags).parse("Just the answer.")
    assert (no_thoughts.reasoning, no_thoughts.content) == ("", "Just the answer.")
