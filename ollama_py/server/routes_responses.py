"""OpenAI's Responses API (/v1/responses) over the same engine as the other routes.

The input becomes the engine's conversation as Ollama converts it (function
calls join the assistant turn before them, reasoning items the next assistant
turn's reasoning; an omitted temperature is 1.0). Where we go past Ollama:
`tool_choice` is honoured, `json_object` is a format too, and answers are
kept for a while (response_store.py) so `previous_response_id` continues a
conversation and GET and DELETE /v1/responses/{id} work; `store: false` keeps
nothing. A non-streamed answer is the streamed one folded: one code path.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import msgspec
from aiohttp import web

from ollama_py.api import codec, responses
from ollama_py.api.options import Format, Options, think_from_effort, think_setting
from ollama_py.engine.chat import ChatDelta, ChatDone, ChatEvent, ChatRequest
from ollama_py.engine.types import DoneReason
from ollama_py.server import images, inference, models, streaming, tool_choice
from ollama_py.server.errors import ApiError, openai_error_body
from ollama_py.server.services import services


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# ---- the request as the engine's conversation ----------------------------------------


def _content(content: str | list[Any], where: str) -> tuple[str, list[str]]:
    """A message's text and images (base64)."""
    if isinstance(content, str):
        return content, []
    text: list[str] = []
    pictures: list[str] = []
    for k, part in enumerate(content):
        match part:
            case responses.InputText() | responses.OutputText() | responses.ReasoningText():
                text.append(part.text)
            case responses.Refusal():
                text.append(part.refusal)
            case responses.InputImage():
                if part.image_url is None:
                    raise codec.BadRequest(f"{where}[{k}]: images by file_id are not supported; send a data: URL")
                pictures.append(images.from_data_url(part.image_url, field=f"{where}[{k}].image_url"))
    return "\n".join(text), pictures


def _reasoning(item: responses.InputItem) -> str:
    """Earlier reasoning as the model wrote it: its text, else what we sent as encrypted_content, else its summary."""
    if isinstance(item.content, list) and item.content:
        return _content(item.content, "reasoning")[0]
    return item.encrypted_content or "".join(s.text for s in item.summary)


def _turns(items: str | list[responses.InputItem]) -> list[dict[str, Any]]:
    """The input items as the templates' messages (OpenAI's chat shape)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}] if items else []
    turns: list[dict[str, Any]] = []
    reasoning = ""  # waits for the assistant turn it belongs to
    names: dict[str, str] = {}  # call ids to function names, for the outputs that answer them
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if item.type == "reasoning":
            reasoning += _reasoning(item)
        elif item.type == "message":
            assert item.role is not None and item.content is not None  # checked when decoded
            text, pictures = _content(item.content, f"{where}.content")
            turn: dict[str, Any] = {"role": "system" if item.role == "developer" else item.role, "content": text}
            if pictures:
                turn["images"] = pictures
            if item.role == "assistant" and reasoning:
                turn["reasoning_content"], reasoning = reasoning, ""
            turns.append(turn)
        elif item.type == "function_call":
            names[item.call_id] = item.name
            call = {"type": "function", "id": item.call_id,
                    "function": {"name": item.name, "arguments": item.arguments or "{}"}}
            if not (turns and turns[-1]["role"] == "assistant"):
                turns.append({"role": "assistant", "content": ""})
            turns[-1].setdefault("tool_calls", []).append(call)
            if reasoning:
                turns[-1]["reasoning_content"], reasoning = reasoning, ""
        else:
            text, pictures = _content(item.output, f"{where}.output")
            result: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": item.call_id}
            if item.call_id in names:
                result["name"] = names[item.call_id]
            if pictures:
                result["images"] = pictures
            turns.append(result)
    if reasoning:
        turns.append({"role": "assistant", "content": "", "reasoning_content": reasoning})
    return turns


def _tools(req: responses.ResponseRequest) -> tuple[tuple[dict[str, Any], ...], str]:
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(req.tools or ()):
        if tool.type != "function" or not tool.name:
            raise codec.BadRequest(f"tools[{i}]: only function tools (with a name) are served here, "
                                   f"not {tool.type!r}")
        tools.append({"type": "function", "function": {
            "name": tool.name, "description": tool.description or "",
            "parameters": tool.parameters or {"type": "object", "properties": {}}}})
    choice = req.tool_choice
    if isinstance(choice, responses.NamedToolChoice):
        if choice.type != "function" or not choice.name:
            raise codec.BadRequest(f"tool_choice: only a function, by name, can be chosen, not {choice.type!r}")
        return tool_choice.choose(tuple(tools), "required", choice.name)
    return tool_choice.choose(tuple(tools), choice or "auto")


def _format(text: responses.TextConfig | None) -> Format | None:
    if text is None or text.format.type == "text":
        return None
    return "json" if text.format.type == "json_object" else text.format.schema


def _think(reasoning: responses.Reasoning | None) -> tuple[bool | None, str]:
    """`reasoning.effort` as the engine's switch and level, mapped as Ollama maps it."""
    try:
        return think_setting(think_from_effort(reasoning.effort if reasoning is not None else None))
    except ValueError as exc:
        raise codec.BadRequest(f"reasoning.effort: {exc}") from None


def _answer_turn(done: ChatDone, content: str, thinking: str) -> dict[str, Any]:
    """The answer as the assistant turn a follow-up continues from."""
    turn: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        turn["reasoning_content"] = thinking
    if done.tool_calls:
        turn["tool_calls"] = [{"type": "function", "id": c.id, "function": {"name": c.name, "arguments": c.arguments}}
                              for c in done.tool_calls]
    return turn


# ---- the stream -----------------------------------------------------------------------


class _Numbers:
    """Every event of a Responses stream carries its place in it, the failure event too."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


class _Output:
    """The output items of a streamed answer: one open at a time (reasoning or the message), each announced,
    filled and closed in turn, as OpenAI streams them."""

    def __init__(self, seq: _Numbers) -> None:
        self.seq = seq
        self.items: list[responses.OutputItem] = []
        self.open: str | None = None  # "reasoning" | "message"
        self.item_id = ""
        self.text: list[str] = []

    def _enter(self, kind: str) -> list[responses.StreamEvent]:
        if self.open == kind:
            return []
        events = self.close("completed")
        self.open, self.item_id, self.text = kind, _id("rs" if kind == "reasoning" else "msg"), []
        index = len(self.items)
        if kind == "reasoning":
            return [*events,
                    responses.OutputItemAdded(sequence_number=self.seq(), output_index=index, item=responses.ReasoningItem(
                        id=self.item_id, summary=[])),
                    responses.ReasoningSummaryPartAdded(sequence_number=self.seq(), item_id=self.item_id,
                                                        output_index=index, summary_index=0,
                                                        part=responses.SummaryText(""))]
        return [*events,
                responses.OutputItemAdded(sequence_number=self.seq(), output_index=index, item=responses.OutputMessage(
                    id=self.item_id, status="in_progress", content=[])),
                responses.ContentPartAdded(sequence_number=self.seq(), item_id=self.item_id, output_index=index,
                                           content_index=0, part=responses.OutputText(text=""))]

    def reasoning(self, delta: str) -> list[responses.StreamEvent]:
        events = self._enter("reasoning")
        self.text.append(delta)
        return [*events, responses.ReasoningSummaryTextDelta(sequence_number=self.seq(), item_id=self.item_id,
                                                             output_index=len(self.items), summary_index=0,
                                                             delta=delta)]

    def message(self, delta: str) -> list[responses.StreamEvent]:
        events = self._enter("message")
        self.text.append(delta)
        return [*events, responses.OutputTextDelta(sequence_number=self.seq(), item_id=self.item_id,
                                                   output_index=len(self.items), content_index=0, delta=delta)]

    def close(self, status: str) -> list[responses.StreamEvent]:
        """Events that finish the open item (`status` for a message: completed, or incomplete when cut short)."""
        if self.open is None:
            return []
        text, index, item_id = "".join(self.text), len(self.items), self.item_id
        events: list[responses.StreamEvent]
        if self.open == "reasoning":
            summary = responses.SummaryText(text)
            item: responses.OutputItem = responses.ReasoningItem(id=item_id, summary=[summary], encrypted_content=text)
            events = [responses.ReasoningSummaryTextDone(sequence_number=self.seq(), item_id=item_id,
                                                         output_index=index, summary_index=0, text=text),
                      responses.ReasoningSummaryPartDone(sequence_number=self.seq(), item_id=item_id,
                                                         output_index=index, summary_index=0, part=summary)]
        else:
            part = responses.OutputText(text=text)
            item = responses.OutputMessage(id=item_id, status=status, content=[part])
            events = [responses.OutputTextDone(sequence_number=self.seq(), item_id=item_id, output_index=index,
                                               content_index=0, text=text),
                      responses.ContentPartDone(sequence_number=self.seq(), item_id=item_id, output_index=index,
                                                content_index=0, part=part)]
        self.open = None
        self.items.append(item)
        return [*events, responses.OutputItemDone(sequence_number=self.seq(), output_index=index, item=item)]

    def call(self, call_id: str, name: str, arguments: str) -> list[responses.StreamEvent]:
        """A whole function call: the engine parses calls once the answer is complete."""
        index, item_id = len(self.items), _id("fc")
        done = responses.FunctionCall(id=item_id, call_id=call_id, name=name, arguments=arguments, status="completed")
        self.items.append(done)
        return [responses.OutputItemAdded(sequence_number=self.seq(), output_index=index, item=responses.FunctionCall(
                    id=item_id, call_id=call_id, name=name, arguments="", status="in_progress")),
                responses.FunctionCallArgumentsDelta(sequence_number=self.seq(), item_id=item_id, output_index=index,
                                                     delta=arguments),
                responses.FunctionCallArgumentsDone(sequence_number=self.seq(), item_id=item_id, output_index=index,
                                                    name=name, arguments=arguments),
                responses.OutputItemDone(sequence_number=self.seq(), output_index=index, item=done)]


Finish = Callable[[ChatDone, list[responses.OutputItem], str, str], responses.Response]


async def _stream(events: AsyncGenerator[ChatEvent, None], start: responses.Response, seq: _Numbers,
                  finish: Finish) -> AsyncGenerator[responses.StreamEvent, None]:
    async with aclosing(events) as answer:
        first = await anext(answer)  # a refusal (unknown model, busy, ...) comes before anything is sent
        yield responses.ResponseCreated(sequence_number=seq(), response=start)
        yield responses.ResponseInProgress(sequence_number=seq(), response=start)
        output = _Output(seq)
        content: list[str] = []
        thinking: list[str] = []
        event: ChatEvent = first
        while isinstance(event, ChatDelta):
            if event.thinking:
                thinking.append(event.thinking)
                for item in output.reasoning(event.thinking):
                    yield item
            if event.content:
                content.append(event.content)
                for item in output.message(event.content):
                    yield item
            event = await anext(answer)
        cut = event.done.reason is DoneReason.LENGTH and not event.tool_calls
        if not (output.items or output.open or event.tool_calls):
            for item in output.message(""):  # an empty answer is still a message
                yield item
        for item in output.close("incomplete" if cut else "completed"):
            yield item
        for call in event.tool_calls:
            for item in output.call(call.id, call.name, call.arguments):
                yield item
        final = finish(event, output.items, "".join(content), "".join(thinking))
        if final.status == "incomplete":
            yield responses.ResponseIncomplete(sequence_number=seq(), response=final)
        else:
            yield responses.ResponseCompleted(sequence_number=seq(), response=final)


# ---- handlers -------------------------------------------------------------------------


async def create(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), responses.ResponseRequest)
    store = services(request).responses
    history: tuple[dict[str, Any], ...] = ()
    if req.previous_response_id is not None:
        previous = store.get(req.previous_response_id)
        if previous is None:
            raise ApiError(404, f"Previous response with id '{req.previous_response_id}' not found.")
        history = previous.conversation
    model = await inference.resolve(request, req.model)
    turns = [*history, *_turns(req.input)]
    if not turns:
        raise codec.BadRequest("input: give at least one input item")
    response_id = _id("resp")
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    tools, choice = _tools(req)
    think, think_level = _think(req.reasoning)
    conversation = ChatRequest(id=response_id, messages=inference.with_modelfile(model, system + turns), tools=tools,
                               tool_choice=choice, format=_format(req.text), think=think, think_level=think_level)
    temperature = 1.0 if req.temperature is None else req.temperature
    options = Options(temperature=temperature, top_p=req.top_p, num_predict=req.max_output_tokens)
    events = inference.converse(request, model, options, models.keep_alive(req.keep_alive), conversation)
    start = responses.Response(
        id=response_id, created_at=int(time.time()), status="in_progress", instructions=req.instructions,
        max_output_tokens=req.max_output_tokens, model=req.model, output=[],
        parallel_tool_calls=req.parallel_tool_calls, previous_response_id=req.previous_response_id,
        reasoning=req.reasoning or responses.Reasoning(), store=req.store, temperature=temperature,
        text=req.text or responses.TextConfig(), tool_choice=req.tool_choice or "auto", tools=req.tools or [],
        top_p=1.0 if req.top_p is None else req.top_p, metadata=req.metadata or {})

    def finish(done: ChatDone, output: list[responses.OutputItem], content: str, thinking: str) -> responses.Response:
        cut = done.done.reason is DoneReason.LENGTH and not done.tool_calls
        prompt, generated = done.done.prompt_tokens, done.done.eval_count
        final = msgspec.structs.replace(
            start, status="incomplete" if cut else "completed", completed_at=int(time.time()), output=output,
            incomplete_details=responses.IncompleteDetails(reason="max_output_tokens") if cut else None,
            usage=responses.Usage(input_tokens=prompt, output_tokens=generated, total_tokens=prompt + generated))
        if req.store:
            store.put(final, (*turns, _answer_turn(done, content, thinking)))
        return final

    seq = _Numbers()
    stream = _stream(events, start, seq, finish)
    if req.stream:
        def failure(error: ApiError) -> responses.StreamError:
            detail = openai_error_body(error).error
            return responses.StreamError(sequence_number=seq(), code=detail.type, message=detail.message)
        return await streaming.named_sse(request, stream, failure)
    final: responses.Response | None = None
    async with aclosing(stream) as folded:
        async for event in folded:
            if isinstance(event, (responses.ResponseCompleted, responses.ResponseIncomplete)):
                final = event.response
    if final is None:
        raise ApiError(500, "the model stopped without finishing its answer")
    return streaming.json(final)


def _stored(request: web.Request) -> str:
    return request.match_info["response_id"]


async def get(request: web.Request) -> web.StreamResponse:
    stored = services(request).responses.get(_stored(request))
    if stored is None:
        raise ApiError(404, f"Response with id '{_stored(request)}' not found.")
    return streaming.json(stored.response)


async def delete(request: web.Request) -> web.StreamResponse:
    if not services(request).responses.delete(_stored(request)):
        raise ApiError(404, f"Response with id '{_stored(request)}' not found.")
    return streaming.json(responses.Deleted(id=_stored(request)))
