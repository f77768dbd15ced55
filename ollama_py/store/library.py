"""The default model as Ollama's library ships it: a chat template that takes tools, its stop tokens and its
system prompt.

The GGUF's own Jinja template has no tool section, so a model imported from it
alone refuses every request that offers tools, and front ends such as
Open-WebUI offer their built-in tools with every chat. Ollama's library model
carries a Go template written for SmolLM2's trained format instead; this one
is ours, written from the model card's function-calling format: the tools as
JSON inside `<tools></tools>` in the system turn, and the answer a JSON list of
`{"name", "arguments"}` objects inside `<tool_call></tool_call>`.
"""

from __future__ import annotations

from ollama_py.store.modelfile import ParamValue

# Without tools it renders exactly what the GGUF's Jinja template renders (ChatML, the system prompt first), so
# answers do not change; with tools, the instructions the model was tuned on replace a plain system turn. Tool
# results go back as a user turn in <tool_response> tags. The text before the `[` of the ToolCalls branch is the
# tag the answer parser looks for, so `<tool_call>` stands alone there.
SMOLLM2_TEMPLATE = """\
{{- if or .System .Tools }}<|im_start|>system
{{ if .Tools }}You are an expert in composing functions. You are given a question and a set of possible \
functions. Based on the question, make one or more function calls to achieve the purpose. If none of the \
functions can be used, say so. If the question lacks an argument a function needs, ask for it.
You have access to the following tools:
<tools>{{ .Tools }}</tools>
To call functions, answer with only a JSON list of calls inside <tool_call></tool_call>, each with the \
function's name and its arguments, for example:
<tool_call>[{"name": "func_name1", "arguments": {"argument1": "value1"}}]</tool_call>
{{- if .System }}

{{ .System }}
{{- end }}
{{- else }}{{ .System }}
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}
{{- if .ToolCalls }}<tool_call>
{{- range $j, $call := .ToolCalls }}{{ if $j }}, {{ else }}[{{ end }}\
{"name": "{{ $call.Function.Name }}", "arguments": {{ json $call.Function.Arguments }}}{{ end }}]</tool_call>
{{- end }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

SMOLLM2_PARAMETERS: dict[str, ParamValue] = {"stop": ["<|im_start|>", "<|im_end|>"]}
