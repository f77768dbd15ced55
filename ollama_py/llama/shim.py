"""Python side of our C shim over llama.cpp's common/ library: chat templates
with tools, output parsing, and JSON-schema grammars, as llama-server has them."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import orjson

from ollama_py.llama.handle import Handle
from ollama_py.llama.lib import LlamaError, shim
from ollama_py.llama.model import Model

# Formats whose parser, without tools or reasoning, may give the answer back as it is, and answers to check
# that it does.
_PLAIN_FORMATS = frozenset({"Content-only", "peg-native"})
_PROBES = ("Yes", " \n plain text, two lines\nand {braces} ", "")


class ShimError(LlamaError):
    """llama.cpp's common library rejected the input; the message is its own."""


def _call(fn: Any, *args: Any) -> dict[str, Any]:
    raw = fn(*args)
    if not raw:
        raise ShimError("out of memory in the shim")
    try:
        result: dict[str, Any] = orjson.loads(ctypes.string_at(raw))
    finally:
        shim().ollama_py_string_free(raw)
    if "error" in result:
        raise ShimError(result["error"])
    return result


def json_schema_to_grammar(schema: dict[str, Any] | bool) -> str:
    """A GBNF grammar whose sentences are the JSON documents valid under the schema."""
    return str(_call(shim().ollama_py_json_schema_to_grammar, orjson.dumps({"schema": schema}))["grammar"])


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text
    id: str


@dataclass(frozen=True)
class ParsedMessage:
    content: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]


class ChatApplied(Handle):
    """A rendered prompt and what is needed to parse the model's answer to it."""

    def __init__(self, ptr: int, info: dict[str, Any], *, tools: bool = False) -> None:
        super().__init__(ptr, shim().ollama_py_chat_result_free, what="chat template result")
        self.tools = tools
        self.prompt: str = info["prompt"]
        self.format: str = info["format"]
        self.grammar: str = info["grammar"]
        self.grammar_lazy: bool = info["grammar_lazy"]
        self.trigger_patterns: tuple[str, ...] = tuple(info["trigger_patterns"])
        self.trigger_tokens: tuple[int, ...] = tuple(info["trigger_tokens"])
        self.preserved_tokens: tuple[str, ...] = tuple(info["preserved_tokens"])
        self.additional_stops: tuple[str, ...] = tuple(info["additional_stops"])
        self.generation_prompt: str = info["generation_prompt"]
        self.supports_thinking: bool = info["supports_thinking"]
        self.thinking_tags: tuple[str, str] | None = (
            (info["thinking_start_tag"], info["thinking_end_tag"])
            if info["thinking_start_tag"] and info["thinking_end_tag"] else None)

    @functools.cached_property
    def plain(self) -> bool:
        """Whether answers are content as they are: no tools to find, no reasoning to split off, and a parser
        that gives text back unchanged (some formats wrap content in markers of their own)."""
        if self.tools or self.supports_thinking or self.format not in _PLAIN_FORMATS:
            return False
        try:
            return all(self.parse(probe, partial=partial).content == probe
                       for probe in _PROBES for partial in (True, False))
        except ShimError:
            return False

    def parse(self, text: str, *, partial: bool = False, parse_tool_calls: bool = True) -> ParsedMessage:
        """Splits generated text into content, reasoning and tool calls."""
        msg = _call(shim().ollama_py_chat_parse, self.ptr,
                    orjson.dumps({"text": text, "partial": partial, "parse_tool_calls": parse_tool_calls}))
        calls = tuple(ToolCall(c["name"], c["arguments"], c["id"]) for c in msg["tool_calls"])
        return ParsedMessage(msg["content"], msg["reasoning_content"], calls)


class ChatTemplates(Handle):
    """The model's chat templates (or a Jinja override), rendered by llama.cpp's engine."""

    def __init__(self, model: Model, template_override: str = "") -> None:
        handle = ctypes.c_void_p()
        info = _call(shim().ollama_py_chat_templates_init, model.ptr,
                     orjson.dumps({"template": template_override}), ctypes.byref(handle))
        super().__init__(handle.value, shim().ollama_py_chat_templates_free, parent=model, what="chat templates")
        self.source: str = info["source"]
        self.caps: dict[str, bool] = info["caps"]

    def apply(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
              tool_choice: str = "auto", json_schema: dict[str, Any] | None = None,
              add_generation_prompt: bool = True, enable_thinking: bool = True,
              reasoning_format: str = "none", parallel_tool_calls: bool = False,
              chat_template_kwargs: dict[str, Any] | None = None) -> ChatApplied:
        """Renders OpenAI-style messages (and tools) into a prompt."""
        request = {
            "messages": messages,
            "tools": tools,
            "tool_choice": tool_choice,
            "json_schema": json_schema,
            "add_generation_prompt": add_generation_prompt,
            "enable_thinking": enable_thinking,
            "reasoning_format": reasoning_format,
            "parallel_tool_calls": parallel_tool_calls,
            "chat_template_kwargs": chat_template_kwargs or {},
        }
        handle = ctypes.c_void_p()
        info = _call(shim().ollama_py_chat_apply, self.ptr, orjson.dumps(request), ctypes.byref(handle))
        return ChatApplied(handle.value, info, tools=bool(tools))
