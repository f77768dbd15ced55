"""Ollama's prompt templates: a model's Go TEMPLATE applied to a conversation the way Ollama's server
applies it, and the model's answer split into thinking, content and tool calls the way Ollama splits it
for that template.

A template sees what Ollama's `template.Execute` gives it: `.System` (every system message, joined),
`.Messages` (consecutive turns of one role merged, each with `.Role .Content .Thinking .ToolCalls
.ToolName .ToolCallID`), `.Tools`, `.Think`, `.ThinkLevel`, `.IsThinkSet` and `.Response` (empty).
A template that never mentions `.Messages` is a legacy one, run once per user/assistant exchange with
`.System .Prompt .Response`, the last run cut after `{{ .Response }}`. With a suffix, `.Prompt` and
`.Suffix` (fill in the middle). Answers are parsed with the tags the template itself shows: the text
before the JSON in its `{{ if .ToolCalls }}` branch marks a tool call, and the text around `.Thinking`
in its messages loop marks reasoning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

import orjson

from ollama_py.engine.gotemplate import (ActionNode, ChainNode, CommandNode, FieldNode, Function, IfNode, JSONList,
                                         JSONMap, Limits, Nil, NilSlice, Node, OrderedMap, PipeNode, PropertyType,
                                         RangeNode, Struct, StructType, Template, TextNode, VariableNode, WithNode,
                                         go_json)
from ollama_py.llama.shim import ParsedMessage, ToolCall

log = logging.getLogger(__name__)


class NilJSONList(JSONList, Nil):
    """Ollama's tool list when the request has none: a nil slice, printed and marshalled as `null`."""


class NilJSONMap(JSONMap, Nil):
    """Ollama's arguments or properties map when there is none: prints `{}`, marshals as `null`."""

    def go_string(self) -> str:
        return "{}"


def _json(value: Any) -> str:
    """Ollama's `json` template function: Go's json.Marshal, and "" for what it cannot encode."""
    try:
        return go_json(value)
    except (ValueError, RecursionError) as exc:
        log.debug("json in a template: %s", exc)
        return ""


def _ts_type(value: Any) -> str:
    """Ollama's `toTypeScriptType`: a tool property's JSON-schema type written as a TypeScript type."""
    if not isinstance(value, Struct) or value.type is not TOOL_PROPERTY:
        return "any"
    any_of = value.values["AnyOf"]
    if any_of:
        return " | ".join(_ts_type(p) for p in any_of)
    types = value.values["Type"]
    names = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}
    return " | ".join(names.get(t, "any") for t in types) if types else "any"


OLLAMA_FUNCS: dict[str, Function] = {
    "json": Function(_json, 1, 1),
    "currentDate": Function(lambda *_: date.today().isoformat(), 0, None),
    "yesterdayDate": Function(lambda *_: (date.today() - timedelta(days=1)).isoformat(), 0, None),
    "toTypeScriptType": Function(_ts_type, 1, 1),
}

# The shapes Ollama hands its templates (template.go: templateMessage, templateTool, ...), JSON tags included,
# so `json .` and `{{ . }}` write what Ollama writes. A tool, its function and its parameters print as their
# JSON, as api.Tool, api.ToolFunction and api.ToolFunctionParameters always have: Qwen's and DeepSeek's
# templates write `{{ .Function }}` into the prompt.
MESSAGE = StructType("*template.templateMessage", tuple((f, f, False) for f in (
    "Role", "Content", "Thinking", "Images", "ToolCalls", "ToolName", "ToolCallID")))
TOOL_CALL = StructType("template.templateToolCall", (("ID", "ID", False), ("Function", "Function", False)))
TOOL_CALL_FUNCTION = StructType("template.templateToolCallFunction", (
    ("Index", "Index", False), ("Name", "Name", False), ("Arguments", "Arguments", False)))
TOOL = StructType("template.templateTool", (("Type", "type", False), ("Items", "items", True),
                                            ("Function", "function", False)), json_string=True)
TOOL_FUNCTION = StructType("template.templateToolFunction", (
    ("Name", "name", False), ("Description", "description", False), ("Parameters", "parameters", False)),
    json_string=True)
TOOL_PARAMETERS = StructType("template.templateToolFunctionParameters", (
    ("Type", "type", False), ("Defs", "$defs", True), ("Items", "items", True), ("Required", "required", True),
    ("Properties", "properties", False)), json_string=True)
TOOL_PROPERTY = StructType("api.ToolProperty", (
    ("AnyOf", "anyOf", True), ("Type", "type", True), ("Items", "items", True), ("Description", "description", True),
    ("Enum", "enum", True), ("Properties", "properties", True), ("Required", "required", True)))


def _json_value(value: Any) -> Any:
    """A JSON value as Go decodes it into `any`: numbers become float64, arrays slices, objects maps."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_json_value(v) for v in value)
    return value


def _text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of an OpenAI-style part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return str(content)


def _arguments(raw: Any) -> JSONMap:
    """Tool-call arguments (an object, or OpenAI's JSON text of one) as Ollama's templateArgs map."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.debug("tool call arguments are not JSON: %r", raw)
            raw = None
    if not isinstance(raw, Mapping):
        return NilJSONMap()
    return JSONMap(_json_value(raw))


def _tool_call(call: Mapping[str, Any]) -> Struct:
    function = call.get("function") or {}
    return TOOL_CALL(ID=str(call.get("id") or ""), Function=TOOL_CALL_FUNCTION(
        Index=int(function.get("index") or 0), Name=str(function.get("name") or ""),
        Arguments=_arguments(function.get("arguments"))))


def _message(message: Mapping[str, Any]) -> Struct:
    calls = message.get("tool_calls") or ()
    images = message.get("images") or ()
    return MESSAGE(
        Role=str(message.get("role") or ""), Content=_text(message.get("content")),
        Thinking=str(message.get("thinking") or message.get("reasoning_content") or ""),
        Images=tuple(images) if images else NilSlice(),
        ToolCalls=tuple(_tool_call(c) for c in calls) if calls else NilSlice(),
        ToolName=str(message.get("tool_name") or message.get("name") or ""),
        ToolCallID=str(message.get("tool_call_id") or ""))


def _property(schema: Mapping[str, Any]) -> Struct:
    """A JSON-schema property as Ollama's api.ToolProperty (keys Ollama does not know are dropped, as Go drops them)."""
    kind = schema.get("type")
    nested = schema.get("properties")
    return TOOL_PROPERTY(
        AnyOf=tuple(_property(p) for p in schema.get("anyOf") or () if isinstance(p, Mapping)),
        Type=PropertyType((kind,) if isinstance(kind, str) else tuple(map(str, kind or ()))),
        Items=_json_value(schema.get("items")), Description=str(schema.get("description") or ""),
        Enum=tuple(_json_value(v) for v in schema.get("enum") or ()),
        Properties=OrderedMap({k: _property(v) for k, v in nested.items() if isinstance(v, Mapping)})
        if isinstance(nested, Mapping) else None,
        Required=tuple(map(str, schema.get("required") or ())))


def _tool(tool: Mapping[str, Any]) -> Struct:
    function = tool.get("function") or {}
    params = function.get("parameters") or {}
    properties = params.get("properties")
    return TOOL(Type=str(tool.get("type") or ""), Items=_json_value(tool.get("items")), Function=TOOL_FUNCTION(
        Name=str(function.get("name") or ""), Description=str(function.get("description") or ""),
        Parameters=TOOL_PARAMETERS(
            Type=str(params.get("type") or ""), Defs=_json_value(params.get("$defs")),
            Items=_json_value(params.get("items")), Required=tuple(map(str, params.get("required") or ())),
            Properties=JSONMap({k: _property(v) for k, v in properties.items() if isinstance(v, Mapping)})
            if isinstance(properties, Mapping) else NilJSONMap())))


def collate(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's collate: every system message joined for `.System`, and consecutive turns of one role merged
    (tool results excepted, each keeps its own name and id)."""
    system: list[str] = []
    merged: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            system.append(_text(message.get("content")))
        if merged and merged[-1].get("role") == role and role != "tool":
            merged[-1]["content"] = _text(merged[-1].get("content")) + "\n\n" + _text(message.get("content"))
        else:
            merged.append(dict(message))
    return "\n\n".join(system), merged


# ---------------------------------------------------------------------------------------------------------------------
# What Ollama reads from a template's tree


def _identifiers(nodes: Sequence[Node]) -> frozenset[str]:
    """Ollama's Template.Vars: the field and variable names a template mentions, lower-cased."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, (IfNode, RangeNode, WithNode)):
            visit(node.pipe)
            for child in node.body + (node.else_body or ()):
                visit(child)
        elif isinstance(node, ActionNode):
            visit(node.pipe)
        elif isinstance(node, PipeNode):
            for cmd in node.cmds:
                for arg in cmd.args:
                    visit(arg)
        elif isinstance(node, FieldNode):
            names.update(n.lower() for n in node.names)
        elif isinstance(node, VariableNode):
            names.update(n.lower() for n in (node.name, *node.fields))

    for node in nodes:
        visit(node)
    return frozenset(names)


def _response_node(pos: int) -> ActionNode:
    field = FieldNode(pos, ("Response",))
    return ActionNode(pos, PipeNode(pos, (), False, (CommandNode(pos, (field,)),)))


def _cut_after_response(nodes: tuple[Node, ...]) -> tuple[Node, ...]:
    """Ollama's deleteNode: everything after the first `.Response` field goes, so the last legacy turn ends
    where the model's answer begins."""
    cut = False

    def gone(node: Any) -> bool:
        nonlocal cut
        if isinstance(node, FieldNode) and "Response" in node.names:
            cut = True
            return False
        return cut

    def walk_list(items: tuple[Node, ...]) -> tuple[Node, ...]:
        if gone(items):
            return ()
        return tuple(kept for kept in (walk(child) for child in items) if kept is not None)

    def walk(node: Any) -> Any:
        if gone(node):
            return None
        if isinstance(node, (IfNode, RangeNode, WithNode)):
            body = walk_list(node.body)
            return replace(node, body=body, else_body=None if node.else_body is None else walk_list(node.else_body))
        if isinstance(node, ActionNode):
            pipe = walk(node.pipe)
            return None if pipe is None else replace(node, pipe=pipe)
        if isinstance(node, PipeNode):
            cmds = []
            for cmd in node.cmds:
                args = tuple(kept for kept in (walk(arg) for arg in cmd.args) if kept is not None)
                if not args:
                    return None
                cmds.append(replace(cmd, args=args))
            return replace(node, cmds=tuple(cmds))
        return node

    return walk_list(nodes)


def _ranges_over(loop: RangeNode, field: str) -> bool:
    """Whether the range's own pipeline reads `.field` (Ollama's rangeUsesField)."""
    stack: list[Any] = [loop.pipe]
    while stack:
        node = stack.pop()
        if isinstance(node, PipeNode):
            stack.extend(arg for cmd in node.cmds for arg in cmd.args)
        elif isinstance(node, FieldNode) and node.names[0] == field:
            return True
    return False


def _tool_calls_branch(nodes: Sequence[Node]) -> IfNode | None:
    """The first `{{ if .ToolCalls }}` in the template (Ollama's findToolCallNode)."""
    for node in nodes:
        if isinstance(node, IfNode):
            direct = any(isinstance(arg, FieldNode) and "ToolCalls" in arg.names
                         for cmd in node.pipe.cmds for arg in cmd.args)
            if direct:
                return node
        if isinstance(node, (IfNode, RangeNode, WithNode)):
            found = _tool_calls_branch(node.body) or _tool_calls_branch(node.else_body or ())
            if found is not None:
                return found
    return None


def _first_text(nodes: Sequence[Node]) -> TextNode | None:
    """The first non-blank text, depth first, stopping at the first action or control structure."""
    for node in nodes:
        if isinstance(node, TextNode):
            if node.text.strip():
                return node
        elif isinstance(node, (IfNode, RangeNode, WithNode)):
            return _first_text(node.body) or _first_text(node.else_body or ())
        elif isinstance(node, ActionNode):
            return None
    return None


def tool_call_tag(nodes: Sequence[Node]) -> str:
    """The text a model writes before a tool call, as the template writes it (`<tool_call>`, `[TOOL_CALLS]`);
    `{` when the template shows none, so that any JSON object naming a tool is taken for a call."""
    branch = _tool_calls_branch(nodes)
    text = _first_text(branch.body) if branch is not None else None
    if text is None:
        return "{"
    return text.text.replace("\r\n", "\n").split("{", 1)[0].strip() or "{"


def thinking_tags(nodes: Sequence[Node]) -> tuple[str, str]:
    """Ollama's thinking.InferTags: around the last `.Thinking` inside a range over `.Messages`, the first and
    last text of the innermost enclosing list are the opening and closing tags ("" where there is none)."""
    opening = closing = ""
    ancestors: list[Any] = []

    def visit_list(items: tuple[Node, ...]) -> None:
        ancestors.append(items)
        for child in items:
            visit(child)
        ancestors.pop()

    def visit(node: Any) -> None:
        nonlocal opening, closing
        ancestors.append(node)
        if isinstance(node, FieldNode) and node.names[0] == "Thinking":
            loop = next((a for a in reversed(ancestors) if isinstance(a, RangeNode)), None)
            if loop is not None and _ranges_over(loop, "Messages"):
                items = next(a for a in reversed(ancestors) if isinstance(a, tuple))
                if isinstance(items[0], TextNode):
                    opening = items[0].text.strip()
                if isinstance(items[-1], TextNode):
                    closing = items[-1].text.strip()
        elif isinstance(node, (IfNode, RangeNode, WithNode)):
            visit(node.pipe)
            visit_list(node.body)
            if node.else_body is not None:
                visit_list(node.else_body)
        elif isinstance(node, ActionNode):
            visit(node.pipe)
        elif isinstance(node, PipeNode):
            for cmd in node.cmds:
                for arg in cmd.args:
                    if not isinstance(arg, ChainNode):
                        visit(arg)
        ancestors.pop()

    visit_list(tuple(nodes))
    return opening, closing


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


_UNBOUNDED = Limits()


class PromptTemplate:
    """A model's Go template, parsed once, with what Ollama reads from it: whether it takes tools, a suffix or
    thinking, and the tags its answers use."""

    def __init__(self, source: str) -> None:
        parsed = Template(source, OLLAMA_FUNCS)
        self.source = source
        self.vars = _identifiers(parsed.nodes)
        nodes = parsed.nodes
        if "messages" not in self.vars and "response" not in self.vars:
            nodes += (_response_node(len(source)),)
        self.template = parsed.with_nodes(nodes)
        self.legacy_last = parsed.with_nodes(_cut_after_response(nodes))
        self.tool_tag = tool_call_tag(parsed.nodes)
        opening, closing = thinking_tags(parsed.nodes)
        self.thinking_tags = (opening, closing) if opening and closing else None

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.vars

    @property
    def supports_insert(self) -> bool:
        return "suffix" in self.vars

    @property
    def supports_thinking(self) -> bool:
        return self.thinking_tags is not None

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] = (), *,
               think: bool | None = None, think_level: str = "", prompt: str = "", suffix: str = "",
               limits: Limits = _UNBOUNDED) -> str:
        """The prompt, as Ollama's template.Execute writes it, each execution within `limits`.

        `.ThinkLevel` is the level asked for, or "medium" for a plain `think: true` (api.ThinkValue.String()).
        Raises TemplateError (a ValueError), LimitExceeded when an execution stops at a limit.
        """
        common = {"Response": "", "Think": bool(think), "ThinkLevel": (think_level or "medium") if think else "",
                  "IsThinkSet": think is not None}
        if prompt and suffix:
            return self.template.execute({"Prompt": prompt, "Suffix": suffix, **common}, limits)
        system, merged = collate(messages)
        if "messages" in self.vars:
            return self.template.execute({
                "System": system,
                "Messages": tuple(_message(m) for m in merged) if merged else NilSlice(),
                "Tools": JSONList(_tool(t) for t in tools) if tools else NilJSONList(),
                **common}, limits)
        return self._render_legacy(merged, common, limits)

    def _render_legacy(self, messages: Sequence[Mapping[str, Any]], common: dict[str, Any], limits: Limits) -> str:
        """A template without `.Messages`: one run per exchange, the last one cut after `.Response`."""
        out: list[str] = []
        turn = {"System": "", "Prompt": "", "Response": ""}
        for message in messages:
            role, content = message.get("role"), _text(message.get("content"))
            if role == "system" and (turn["Prompt"] or turn["Response"]) or role == "user" and turn["Response"]:
                out.append(self.template.execute({**common, **turn}, limits))
                turn = {"System": "", "Prompt": "", "Response": ""}
            if role == "system":
                turn["System"] = content
            elif role == "user":
                turn["Prompt"] = content
            elif role == "assistant":
                turn["Response"] = content
        out.append(self.legacy_last.execute({**common, **turn}, limits))
        return "".join(out)


@functools.lru_cache(maxsize=64)
def parse_template(source: str) -> PromptTemplate:
    """A parsed template, kept: the same few templates serve every request. Raises TemplateError."""
    return PromptTemplate(source)


# ---------------------------------------------------------------------------------------------------------------------
# Answers


def _overlap(text: str, tag: str) -> int:
    """How many characters at the end of text could be the start of tag."""
    for n in range(min(len(tag), len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def split_thinking(text: str, opening: str, closing: str, *, partial: bool) -> tuple[str, str]:
    """Ollama's thinking parser over the whole answer so far: (reasoning, content)."""
    trimmed = text.lstrip()
    if not trimmed or opening.startswith(trimmed):
        return "", ""  # nothing yet, or what may still become the opening tag
    if not trimmed.startswith(opening):
        return "", text
    rest = trimmed[len(opening):].lstrip()
    end = rest.find(closing)
    if end < 0:
        return (rest[:len(rest) - _overlap(rest, closing)] if partial else rest), ""
    return rest[:end], rest[end + len(closing):].lstrip()


def _find_tool(names: Sequence[str], buffer: str) -> tuple[str, int] | None:
    """The earliest (then longest) tool name in the buffer and where it ends; None while the buffer ends in what
    may still grow into a name."""
    if not buffer or not names:
        return None
    longest = max(len(n) for n in names)
    for size in range(1, min(len(buffer), longest) + 1):
        tail = buffer[-size:]
        if any(len(tail) < len(n) and n.startswith(tail) for n in names):
            return None
    best: tuple[str, int] | None = None
    for name in names:
        pos = buffer.find(name)
        if pos < 0 or best is not None and (pos > best[1] or pos == best[1] and len(name) <= len(best[0])):
            continue
        best = (name, pos)
    return None if best is None else (best[0], best[1] + len(best[0]))


def _object_arguments(name: str, obj: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any] | None]:
    """Where a call's arguments sit in a JSON object: `arguments`/`parameters` beside a `name`, under the tool's
    name, or deeper. (found, arguments); found with None arguments means a call without usable arguments."""

    def as_map(key: str) -> Mapping[str, Any] | None:
        value = obj.get(key)
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
        return value if isinstance(value, Mapping) else None

    if "name" in obj:
        args = as_map("arguments")
        return True, args if args is not None else as_map("parameters")
    args = as_map(name)
    if args is not None:
        return True, args
    for value in obj.values():
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, Mapping):
                found = _object_arguments(name, child)
                if found[0]:
                    return found
    return False, None


def _find_arguments(name: str, buffer: str) -> tuple[Mapping[str, Any] | None, int] | None:
    """The first complete JSON object in the buffer that holds the call's arguments, and the index of its last
    brace; None when there is no complete object yet."""
    start = -1
    depth = 0
    in_string = escaped = False
    for i, c in enumerate(buffer):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0 and start != -1:
                try:
                    data = orjson.loads(buffer[start:i + 1])
                except orjson.JSONDecodeError:
                    start = -1
                    continue
                if not isinstance(data, dict):
                    start = -1
                    continue
                found, args = _object_arguments(name, data)
                return (args if found else data), i
            depth = max(depth, 0)
    return None


def _balanced(buffer: str, tag: str) -> bool:
    """For a `{` or `[` tag: whether the first bracket closes in the buffer (plain JSON, not a call)."""
    if tag not in ("{", "["):
        return False
    opening, closing = tag, "}" if tag == "{" else "]"
    depth = 0
    for c in buffer:
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return True
    return False


def split_tool_calls(text: str, tag: str, names: Sequence[str], *,
                     partial: bool) -> tuple[str, tuple[ToolCall, ...]]:
    """Ollama's tool parser over the whole answer so far: (content, calls). While partial, nothing from the tag
    on is content yet; calls are only reported whole, at the end."""
    start = text.find(tag)
    if start < 0:
        return (text[:len(text) - _overlap(text, tag)] if partial else text), ()
    before, buffer = text[:start], text[start:]
    if tag in ("{", "[") and before.strip():
        return text, ()  # prose that happens to hold JSON: Ollama stops looking for calls
    calls: list[ToolCall] = []
    while (tool := _find_tool(names, buffer)) is not None:
        found = _find_arguments(tool[0], buffer)
        if found is None or found[0] is None:
            break
        args, end = found
        calls.append(ToolCall(tool[0], orjson.dumps(args).decode(), ""))
        buffer = buffer[max(tool[1], end):]
    if calls:
        return before, () if partial else tuple(calls)
    if _balanced(buffer, tag) or not partial:
        # No call after all: the model's words as they are (Ollama drops them after a named tag; we keep them).
        return text, ()
    return before, ()


@dataclass
class RenderedPrompt:
    """A prompt rendered from a Go template, and how to read the answer to it; has the shape of the shim's
    ChatApplied that the chat loop uses (`prompt`, `parse`, `close`)."""

    prompt: str
    thinking_tags: tuple[str, str] | None = None
    tool_tag: str = "{"
    tool_names: tuple[str, ...] = ()

    def parse(self, text: str, *, partial: bool = False) -> ParsedMessage:
        reasoning = ""
        content = text
        if self.thinking_tags is not None:
            opening, closing = self.thinking_tags
            if self.prompt.strip().endswith(opening):
                text = opening + text  # the template opened the reasoning itself
            reasoning, content = split_thinking(text, opening, closing, partial=partial)
        calls: tuple[ToolCall, ...] = ()
        if self.tool_names:
            content, calls = split_tool_calls(content, self.tool_tag, self.tool_names, partial=partial)
        return ParsedMessage(content, reasoning, calls)

    def close(self) -> None:
        """Nothing to free (the shim's results hold C memory; this one does not)."""
