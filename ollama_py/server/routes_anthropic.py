"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) over the same engine as the other routes.

A request becomes the engine's conversation as Ollama converts it: a user
turn's `tool_result` blocks become tool messages before its text, `thinking`
blocks the assistant's reasoning, `max_tokens` is `num_predict`, and an
omitted temperature or top_p leaves the model's own. Where we go past Ollama:
`tool_choice` is honoured (as on /v1/chat/completions), a stop sequence is
reported as `stop_sequence`, and count_tokens counts with the model's own
template and tokenizer rather than guessing from the length of the text.
Errors have Anthropic's shape (errors.py).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson
from aiohttp import web

from ollama_py.api import anthropic, codec
from ollama_py.api.options import Options
from ollama_py.engine.chat import ChatDelta, ChatDone, ChatEvent, ChatRequest
from ollama_py.engine.types import DoneReason
from ollama_py.llama.shim import ToolCall
from ollama_py.server import inference, models, streaming, tool_choice
from ollama_py.server.errors import ApiError, anthropic_error_body
from ollama_py.server.models import ResolvedModel
from ollama_py.server.routes_native import tool_arguments

_CHOICE: dict[str, tool_choice.Mode] = {"auto": "auto", "any": "required", "tool": "required", "none": "none"}


def _message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


def _image(block: anthropic.ImageBlock, where: str) -> str:
    if block.source.type != "base64":
        raise codec.BadRequest(f"{where}: only base64 image sources are supported, not URLs")
    return block.source.data


def _tool_result(block: anthropic.ToolResultBlock, where: str, names: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "tool", "tool_call_id": block.tool_use_id}
    if block.tool_use_id in names:
        out["name"] = names[block.tool_use_id]  # Ollama's templates show the tool's name with its result
    if isinstance(block.content, str):
        out["content"] = block.content
        return out
    out["content"] = "\n".join(b.text for b in block.content if isinstance(b, anthropic.TextBlock))
    images = [_image(b, f"{where}.content[{k}]") for k, b in enumerate(block.content)
              if isinstance(b, anthropic.ImageBlock)]
    if images:
        out["images"] = images
    return out


def _turn(message: anthropic.Message, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """One Anthropic message as the templates' messages: tool results first for a user, then the rest."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    text: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[str] = []
    results: list[dict[str, Any]] = []
    for k, block in enumerate(message.content):
        match block:
            case anthropic.TextBlock():
                text.append(block.text)
            case anthropic.ImageBlock():
                images.append(_image(block, f"{where}.content[{k}]"))
            case anthropic.ToolUseBlock():
                names[block.id] = block.name
                calls.append({"type": "function", "id": block.id, "function": {
                    "name": block.name, "arguments": orjson.dumps(block.input).decode()}})
            case anthropic.ToolResultBlock():
                results.append(_tool_result(block, f"{where}.content[{k}]", names))
            case anthropic.ThinkingBlock():
                thinking.append(block.thinking)
            case anthropic.RedactedThinkingBlock():
                pass  # encrypted by Anthropic: nothing a local model can read
    turn: list[dict[str, Any]] = []
    if text or images or calls or thinking:
        out: dict[str, Any] = {"role": message.role, "content": "\n".join(text)}
        if images:
            out["images"] = images
        if calls:
            out["tool_calls"] = calls
        if thinking:
            out["reasoning_content"] = "".join(thinking)
        turn.append(out)
    return results + turn if message.role == "user" else turn + results


def _tools(req: anthropic.CountTokensRequest) -> tuple[tuple[dict[str, Any], ...], str]:
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(req.tools or ()):
        if tool.type != "custom":
            raise codec.BadRequest(f"tools[{i}]: Anthropic's server tool {tool.type!r} is not available here; "
                                   "define the tool with a name and an input_schema")
        tools.append({"type": "function", "function": {"name": tool.name, "description": tool.description,
                                                       "parameters": tool.input_schema}})
    choice = req.tool_choice
    if choice is None:
        return tool_choice.choose(tuple(tools), "auto")
    return tool_choice.choose(tuple(tools), _CHOICE[choice.type], choice.name)


def _think(req: anthropic.CountTokensRequest) -> bool | None:
    """`thinking` on or off; else an `output_config.effort` turns it on; else the template decides."""
    if req.thinking is not None and req.thinking.type in ("enabled", "disabled"):
        return req.thinking.type == "enabled"
    if req.output_config is not None and req.output_config.effort is not None:
        return True
    return None


def _conversation(req: anthropic.CountTokensRequest, model: ResolvedModel, message_id: str) -> ChatRequest:
    turns: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
        turns.append({"role": "system", "content": system})
    names: dict[str, str] = {}  # tool_use ids to tool names, for the results that answer them
    for i, message in enumerate(req.messages):
        turns += _turn(message, f"messages[{i}]", names)
    tools, choice = _tools(req)
    output = req.output_config
    return ChatRequest(id=message_id, messages=inference.with_modelfile(model, turns), tools=tools,
                       tool_choice=choice, think=_think(req),
                       format=output.format.schema if output is not None and output.format is not None else None)


def _options(req: anthropic.MessagesRequest) -> Options:
    return Options(num_predict=req.max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                   stop=req.stop_sequences)


def _stop(done: ChatDone, stops: list[str]) -> anthropic.Stop:
    if done.tool_calls:
        return anthropic.Stop(stop_reason="tool_use")
    if done.done.reason is DoneReason.LENGTH:
        return anthropic.Stop(stop_reason="max_tokens")
    if done.done.stop_sequence and done.done.stop_sequence in stops:
        return anthropic.Stop(stop_reason="stop_sequence", stop_sequence=done.done.stop_sequence)
    return anthropic.Stop(stop_reason="end_turn")


def _usage(done: ChatDone) -> anthropic.Usage:
    return anthropic.Usage(input_tokens=done.done.prompt_tokens, output_tokens=done.done.eval_count)


def _tool_use(call: ToolCall) -> anthropic.ToolUseBlock:
    return anthropic.ToolUseBlock(id=call.id, name=call.name, input=tool_arguments(call.arguments))


async def messages(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), anthropic.MessagesRequest)
    model = await inference.resolve(request, req.model)
    message_id = _message_id()
    conversation = _conversation(req, model, message_id)
    events = inference.converse(request, model, _options(req), models.keep_alive(req.keep_alive), conversation)
    start = anthropic.MessageResponse(id=message_id, content=[], model=req.model,
                                      usage=anthropic.Usage(input_tokens=0, output_tokens=0))
    stops = req.stop_sequences or []
    if req.stream:
        return await streaming.named_sse(request, _stream(events, start, stops), anthropic_error_body)
    text: list[str] = []
    thinking: list[str] = []
    async with aclosing(events) as answer:
        async for event in answer:
            if isinstance(event, ChatDelta):
                text.append(event.content)
                thinking.append(event.thinking)
                continue
            blocks: list[anthropic.AnswerBlock] = []
            if any(thinking):
                blocks.append(anthropic.ThinkingBlock(thinking="".join(thinking)))
            if any(text) or not (blocks or event.tool_calls):
                blocks.append(anthropic.TextBlock(text="".join(text)))
            blocks += [_tool_use(c) for c in event.tool_calls]
            stop = _stop(event, stops)
            return streaming.json(anthropic.MessageResponse(
                id=message_id, content=blocks, model=req.model, stop_reason=stop.stop_reason,
                stop_sequence=stop.stop_sequence, usage=_usage(event)))
    raise ApiError(500, "the model stopped without finishing its answer")


class _Blocks:
    """The content blocks of a streamed answer: one open at a time, each started and stopped in turn."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None

    def enter(self, kind: str, block: anthropic.AnswerBlock) -> list[anthropic.StreamEvent]:
        """Events that make `kind` the open block (nothing if it already is)."""
        if self.open == kind:
            return []
        events = self.close()
        self.index += 1
        self.open = kind
        return [*events, anthropic.ContentBlockStart(index=self.index, content_block=block)]

    def close(self) -> list[anthropic.StreamEvent]:
        if self.open is None:
            return []
        self.open = None
        return [anthropic.ContentBlockStop(self.index)]


async def _stream(events: AsyncGenerator[ChatEvent, None], start: anthropic.MessageResponse,
                  stops: list[str]) -> AsyncGenerator[anthropic.StreamEvent, None]:
    async with aclosing(events) as answer:
        first = await anext(answer)  # a refusal (unknown model, busy, ...) comes before anything is sent
        yield anthropic.MessageStart(start)
        blocks = _Blocks()
        pinged = False
        event: ChatEvent = first
        while True:
            out: list[anthropic.StreamEvent] = []
            if isinstance(event, ChatDelta):
                if event.thinking:
                    out += blocks.enter("thinking", anthropic.ThinkingBlock(thinking=""))
                    out.append(anthropic.ContentBlockDelta(index=blocks.index,
                                                           delta=anthropic.ThinkingDelta(event.thinking)))
                if event.content:
                    out += blocks.enter("text", anthropic.TextBlock(text=""))
                    out.append(anthropic.ContentBlockDelta(index=blocks.index,
                                                           delta=anthropic.TextDelta(event.content)))
            else:
                for i, call in enumerate(event.tool_calls):
                    out += blocks.enter(f"tool_use {i}", anthropic.ToolUseBlock(id=call.id, name=call.name))
                    partial = orjson.dumps(tool_arguments(call.arguments)).decode()
                    out.append(anthropic.ContentBlockDelta(index=blocks.index,
                                                           delta=anthropic.InputJSONDelta(partial)))
                out += blocks.close()
            for item in out:
                yield item
                if not pinged and isinstance(item, anthropic.ContentBlockStart):
                    pinged = True
                    yield anthropic.Ping()  # after the first block starts, where Anthropic sends its ping
            if isinstance(event, ChatDone):
                if not pinged:
                    yield anthropic.Ping()
                yield anthropic.MessageDelta(delta=_stop(event, stops), usage=_usage(event))
                yield anthropic.MessageStop()
                return
            event = await anext(answer)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """The prompt's tokens as the model would read it: rendered and tokenized by the model, nothing generated.

    Ollama estimates a quarter of the characters; we read the prompt (which also
    warms the prompt cache for the request that usually follows).
    """
    req = codec.decode(await request.read(), anthropic.CountTokensRequest)
    model = await inference.resolve(request, req.model)
    conversation = _conversation(req, model, _message_id())
    async with aclosing(inference.converse(request, model, Options(num_predict=0), None, conversation)) as events:
        async for event in events:
            if isinstance(event, ChatDone):
                return streaming.json(anthropic.CountTokensResponse(input_tokens=event.done.prompt_tokens))
    raise ApiError(500, "the model stopped without reading the prompt")
