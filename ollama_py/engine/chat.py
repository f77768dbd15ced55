"""Chat on top of the runner: messages in through the model's template, text out
split into content, reasoning and whole tool calls.

A model's own chat template (the GGUF's Jinja, or the Go template our import
derived from it) is rendered and parsed by llama.cpp (common/chat, through our
shim), so every model family llama-server handles gets the same tool calling.
Any other template, a Modelfile TEMPLATE or one in a store written by Ollama,
is in Ollama's Go syntax: it is rendered and its answers parsed as Ollama does
(engine/goprompt.py).
"""

from __future__ import annotations

import logging
import secrets
import string
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec

from ollama_py.engine import limits as work_limits
from ollama_py.engine import schema_patterns, vision
from ollama_py.engine.answer_stream import GoAnswer
from ollama_py.engine.goprompt import PromptTemplate, RenderedPrompt, parse_template
from ollama_py.engine.gotemplate import LimitExceeded, Limits, TemplateError
from ollama_py.engine.limits import WorkLimits
from ollama_py.engine.runner import Runner
from ollama_py.engine.types import Done, GenerationRequest, Logprob, PromptTooLong, Sampling, Token
from ollama_py.llama.model import Model
from ollama_py.llama.mtmd import Projector
from ollama_py.llama.sampler import Grammar, GrammarError, SamplerChain, SamplerConfig
from ollama_py.llama.shim import ChatApplied, ChatTemplates, ShimError, ToolCall, json_schema_to_grammar
from ollama_py.store.create import derived_template

log = logging.getLogger(__name__)

# Ollama's `format: "json"` asks for a JSON object, not any JSON value.
_JSON_OBJECT: dict[str, Any] = {"type": "object"}


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation as OpenAI-style message dicts (what the templates are written against)."""

    id: str
    model: str = ""  # the model's name as the request wrote it, for the messages of refusals
    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str = "auto"  # OpenAI's "auto" | "required" | "none"; Ollama always sends "auto"
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema
    think: bool | None = None  # None: the template's default
    # The level a request asked for ("low", "medium", "high", "max"), or "": the template's `.ThinkLevel`
    # (Ollama's api.ThinkValue.String(): "medium" for a plain true) and a Jinja template's `reasoning_effort`.
    think_level: str = ""
    sampling: Sampling = Sampling()
    truncate: bool = True
    shift: bool = True  # go on past the context's end by dropping its oldest tokens (Ollama's `shift`)
    logprobs: bool = False
    top_logprobs: int = 0
    # The model's TEMPLATE (or a request's own), in Ollama's Go syntax. "" or the template our import derived
    # from the GGUF's chat template mean the GGUF's own template, rendered by llama.cpp.
    template: str = ""


@dataclass(frozen=True)
class ChatDelta:
    """New answer text of one step, already split into content and reasoning."""

    content: str
    thinking: str
    logprob: Logprob | None = None


@dataclass(frozen=True)
class ChatDone:
    """The end of the answer: the parsed message as a whole, and the runner's counters."""

    done: Done
    content: str
    thinking: str
    tool_calls: tuple[ToolCall, ...]
    context: tuple[int, ...] = ()  # the prompt and the answer as tokens, where the request asked for them


ChatEvent = ChatDelta | ChatDone


@dataclass(frozen=True)
class PreparedChat:
    """The rendered prompt as a runner request, and the parser for its answer (none for raw prompts)."""

    request: GenerationRequest
    applied: ChatApplied | RenderedPrompt | None


class _Rendered(Protocol):
    """A rendered prompt as either renderer gives it back."""

    @property
    def prompt(self) -> str: ...

    def close(self) -> None: ...


_R = TypeVar("_R", bound=_Rendered)


def grammar_for_format(fmt: str | dict[str, Any] | None,
                       max_bytes: int = work_limits.DEFAULT.max_grammar_bytes) -> Grammar | None:
    """Ollama's `format`: "" or None is free text, "json" an object, a dict a JSON schema.

    A grammar's size is what each sampled token pays for (a schema's long `enum` stalls every stream on
    the model), so one over `max_bytes` is refused.
    """
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return Grammar(gbnf=json_schema_to_grammar(_JSON_OBJECT))
    if isinstance(fmt, dict):
        schema_patterns.check(fmt, "format")
        try:
            gbnf = json_schema_to_grammar(fmt)
        except (ShimError, TypeError, OverflowError) as exc:  # TypeError: a number JSON cannot carry to C++
            raise ValueError(f"invalid JSON schema in format: {exc}") from None
        if len(gbnf) > max_bytes:
            raise ValueError(f"the JSON schema in format makes a grammar of {len(gbnf)} bytes, more than this "
                             f"server allows ({max_bytes}, {work_limits.GRAMMAR_SETTING})")
        return Grammar(gbnf=gbnf)
    raise ValueError(f"invalid format {fmt!r}: expected \"json\" or a JSON schema object")


def _reasoning_first(chat: ChatRequest, tags: tuple[str, str] | None, prompt: str) -> dict[str, Any]:
    """With a format on a model that thinks, the fields that hold the grammar back until the reasoning
    ends, as Ollama lets the model think first and then constrains its answer."""
    if chat.format in (None, "") or tags is None:
        return {}
    return {"reasoning_tags": tags, "reasoning_opened": prompt.rstrip().endswith(tags[0])}


def _reasoning_effort(level: str) -> dict[str, Any]:
    """The level as Jinja templates read it (gpt-oss's `reasoning_effort`), which know low, medium and high:
    "max" is "high" there, as Ollama maps it for harmony."""
    if not level:
        return {}
    return {"reasoning_effort": "high" if level == "max" else level}


def _droppable_turns(messages: list[dict[str, Any]]) -> list[list[int]]:
    """The indexes of the turns truncation may drop, oldest first: each non-system message but the last,
    with the tool results that follow it (never the last message)."""
    turns: list[list[int]] = []
    i, last = 0, len(messages) - 1
    while i < last:
        if messages[i].get("role") == "system":
            i += 1
            continue
        turn = [i]
        i += 1
        while i < last and messages[i].get("role") == "tool":
            turn.append(i)
            i += 1
        turns.append(turn)
    return turns


class ChatFormatter:
    """A model's chat templates (or a Jinja override) and what it can do with them."""

    def __init__(self, model: Model, template_override: str = "",
                 limits: WorkLimits = work_limits.DEFAULT, projector: Projector | None = None) -> None:
        self.model = model
        self.limits = limits
        self.projector = projector  # the model takes images only with one
        self.templates = ChatTemplates(model, template_override)
        # What our import stores as TEMPLATE for this GGUF: such a model keeps its own template.
        self._derived = derived_template(model.chat_template())

    @property
    def supports_tools(self) -> bool:
        return bool(self.templates.caps.get("supports_tools"))

    def close(self) -> None:
        self.templates.close()

    def go_template(self, source: str) -> PromptTemplate | None:
        """The Go template to render with, or None for the model's own template.

        Raises ValueError for a template that does not parse, naming where.
        """
        if not source or source == self._derived:
            return None
        try:
            return parse_template(source)
        except TemplateError as exc:
            raise ValueError(f"the model's template is not valid: {exc}") from None

    def prepare(self, chat: ChatRequest, num_ctx: int, cancelled: threading.Event | None = None) -> PreparedChat:
        """Renders and tokenizes the conversation, dropping its oldest turns if it does not fit.

        Blocking (template rendering and tokenization); run it off the event loop. A Go template's rendering
        stops at the limits, or when `cancelled` is set. Raises ValueError for requests the model cannot
        serve, as Ollama answers 400.
        """
        for i, tool in enumerate(chat.tools):
            schema_patterns.check(tool, f"tools[{i}]")
        pictures = self._vision(chat, vision.has_images(chat.messages))
        if pictures is not None:
            chat = msgspec.structs.replace(chat, messages=tuple(pictures.messages))
        tokenize = pictures.tokenize if pictures is not None else self._tokenize
        try:
            template = self.go_template(chat.template)
            if template is None:
                prepared = self._prepare_own(chat, num_ctx, tokenize)
            else:
                prepared = self._prepare_go(chat, template, num_ctx, self.limits.template(cancelled), tokenize)
        finally:
            if pictures is not None:
                pictures.close()
        return _with_images(prepared, pictures)

    def _vision(self, chat: ChatRequest, wanted: bool) -> vision.VisionPrompt | None:
        """The request's images decoded for the projector; None without images. ValueError (a 400) for a
        model without a projector, or an image it cannot read."""
        if not wanted:
            return None
        if self.projector is None:
            raise ValueError(f"{chat.model or 'the model'} does not support images")
        return vision.VisionPrompt(self.projector, chat.messages)

    def _tokenize(self, text: str) -> list[int]:
        return self.model.vocab.tokenize(text, add_special=True, parse_special=True)

    def grammar(self, fmt: str | dict[str, Any] | None) -> Grammar | None:
        """The grammar for `format`, within this server's size bound, checked by llama.cpp's own parser: a
        grammar it refuses (left recursion, repetitions past its bound) is the request's fault, told now."""
        grammar = grammar_for_format(fmt, self.limits.max_grammar_bytes)
        if grammar is not None:
            try:
                SamplerChain(self.model.vocab, SamplerConfig(grammar=grammar)).close()
            except GrammarError:
                raise ValueError("the JSON schema in format makes a grammar llama.cpp cannot use "
                                 "(a recursive reference, or a repetition count too large)") from None
        return grammar

    def _prepare_own(self, chat: ChatRequest, num_ctx: int, tokenize: Callable[[str], list[int]]) -> PreparedChat:
        """The model's own template, through llama.cpp: its lazy tool grammar, stops and special tokens too."""
        if chat.tools and not self.supports_tools:
            raise ValueError(f"{chat.model or 'the model'} does not support tools")
        grammar = self.grammar(chat.format)
        applied, prompt = self._fit(chat, num_ctx, lambda messages: self._apply(chat, messages), tokenize)
        if chat.think and not applied.supports_thinking:
            applied.close()
            raise ValueError(f"{chat.model or 'the model'} does not support thinking")
        prefill: tuple[int, ...] = ()
        if grammar is None and applied.grammar:
            grammar = Grammar(gbnf=applied.grammar, lazy=applied.grammar_lazy,
                              trigger_patterns=applied.trigger_patterns, trigger_tokens=applied.trigger_tokens)
            if not applied.grammar_lazy:
                prefill = self._generation_prompt_tokens(applied.generation_prompt)
        sampling = chat.sampling
        if applied.additional_stops:
            sampling = msgspec.structs.replace(sampling, stop=sampling.stop + applied.additional_stops)
        tags = applied.thinking_tags if chat.think is not False and applied.supports_thinking else None
        request = GenerationRequest(
            id=chat.id, prompt=tuple(prompt), sampling=sampling, grammar=grammar, truncate=chat.truncate,
            logprobs=chat.logprobs, top_logprobs=chat.top_logprobs,
            special_tokens=self._single_tokens(applied.preserved_tokens), grammar_prefill=prefill,
            **_reasoning_first(chat, tags, applied.prompt))
        return PreparedChat(request=request, applied=applied)

    def _prepare_go(self, chat: ChatRequest, template: PromptTemplate, num_ctx: int, limits: Limits,
                    tokenize: Callable[[str], list[int]]) -> PreparedChat:
        """A Go template, as Ollama's server uses one: what it can do is what it mentions, a thinking model
        thinks unless told not to, and answers are read with the tags the template shows."""
        if chat.tools and not template.supports_tools:
            raise ValueError(f"{chat.model or 'the model'} does not support tools")
        if chat.think and not template.supports_thinking:
            raise ValueError(f"{chat.model or 'the model'} does not support thinking")
        think = chat.think if chat.think is not None else (True if template.supports_thinking else None)
        names = tuple(str((t.get("function") or {}).get("name") or "") for t in chat.tools)
        grammar = self.grammar(chat.format)

        def render(messages: list[dict[str, Any]]) -> RenderedPrompt:
            try:
                text = template.render(messages, chat.tools, think=think, think_level=chat.think_level,
                                       limits=limits)
            except LimitExceeded as exc:
                raise ValueError(f"cannot render the conversation with the model's template: "
                                 f"{work_limits.describe(exc)}") from None
            except TemplateError as exc:
                raise ValueError(f"cannot render the conversation with the model's template: {exc}") from None
            # Read with the tags even when thinking is off: a model that reasons anyway keeps its reasoning
            # out of the answer (the server then drops it).
            return RenderedPrompt(prompt=text, thinking_tags=template.thinking_tags,
                                  tool_tag=template.tool_tag, tool_names=tuple(n for n in names if n))

        rendered, prompt = self._fit(chat, num_ctx, render, tokenize)
        request = GenerationRequest(
            id=chat.id, prompt=tuple(prompt), sampling=chat.sampling, grammar=grammar, truncate=chat.truncate,
            logprobs=chat.logprobs, top_logprobs=chat.top_logprobs,
            **_reasoning_first(chat, rendered.thinking_tags if think else None, rendered.prompt))
        return PreparedChat(request=request, applied=rendered)

    def _fit(self, chat: ChatRequest, num_ctx: int, render: Callable[[list[dict[str, Any]]], _R],
             tokenize: Callable[[str], list[int]]) -> tuple[_R, list[int]]:
        """The conversation rendered and tokenized, without its oldest non-system turns while it does not fit.

        A tool result goes with the call before it, as Ollama drops them: a result without its call would
        answer a question the model never asked. The fewest turns to drop is found by bisection, so a long
        conversation is rendered a logarithmic number of times, not once per dropped turn (a prompt only
        shrinks as turns go). Raises PromptTooLong when it is longer than the context and the request forbids
        truncating.
        """
        messages = list(chat.messages)
        first = _render_tokens(render, tokenize, messages)
        if not chat.truncate:
            try:
                PromptTooLong.check(len(first[1]), num_ctx)
            except PromptTooLong:
                first[0].close()
                raise
            return first
        if len(first[1]) < num_ctx:
            return first
        turns = _droppable_turns(messages)
        if not turns:
            return first  # only system messages and the last one: the runner cuts tokens
        first[0].close()
        fitting: tuple[int, tuple[_R, list[int]]] | None = None
        shortest: tuple[_R, list[int]] | None = None  # every turn dropped, kept if nothing fits
        low, high = 1, len(turns)
        while low <= high:
            middle = (low + high) // 2
            gone = {i for turn in turns[:middle] for i in turn}
            tried = _render_tokens(render, tokenize, [m for i, m in enumerate(messages) if i not in gone])
            if len(tried[1]) < num_ctx:
                if fitting is not None:
                    fitting[1][0].close()
                fitting, high = (middle, tried), middle - 1
            elif middle == len(turns):
                shortest, low = tried, middle + 1
            else:
                tried[0].close()
                low = middle + 1
        if fitting is None:
            assert shortest is not None
            log.info("request %s: dropped all %d older turns and still does not fit %d tokens", chat.id,
                     len(turns), num_ctx)
            return shortest
        log.info("request %s: dropped its %d oldest turns to fit %d tokens", chat.id, fitting[0], num_ctx)
        return fitting[1]

    def prepare_generate(self, chat: ChatRequest, prompt: str, *, system: str = "", raw: bool = False,
                         num_ctx: int, suffix: str = "", images: tuple[str, ...] = (),
                         cancelled: threading.Event | None = None) -> PreparedChat:
        """Ollama's /api/generate: the prompt as one user turn, or as it is when raw, or around a suffix
        (fill in the middle) through a Go template that takes one.

        `chat.messages` is ignored; the other fields apply as for a chat.
        """
        if suffix and not raw:
            if images:
                raise ValueError("images cannot be used with suffix (fill in the middle)")
            return self._prepare_insert(chat, prompt, suffix, num_ctx, self.limits.template(cancelled))
        if raw:
            if system:
                raise ValueError("raw mode does not take a system prompt")
            pictures = self._vision(chat, bool(images))
            try:
                tokens = pictures.tokenize(pictures.mark_raw(prompt, images)) if pictures is not None \
                    else self._tokenize(prompt)
            finally:
                if pictures is not None:
                    pictures.close()
            request = GenerationRequest(
                id=chat.id, prompt=tuple(tokens), sampling=chat.sampling, grammar=self.grammar(chat.format),
                truncate=chat.truncate, logprobs=chat.logprobs, top_logprobs=chat.top_logprobs)
            return _with_images(PreparedChat(request=request, applied=None), pictures)
        turn = ({"role": "system", "content": system},) if system else ()
        return self.prepare(msgspec.structs.replace(chat, messages=turn + ({"role": "user", "content": prompt},)),
                            num_ctx, cancelled)

    def _prepare_insert(self, chat: ChatRequest, prompt: str, suffix: str, num_ctx: int,
                        limits: Limits) -> PreparedChat:
        """Fill in the middle: the template's `.Prompt` and `.Suffix`, and the model writes what goes between."""
        template = self.go_template(chat.template)
        if template is None or not template.supports_insert:
            raise ValueError(f"{chat.model or 'the model'} does not support insert")
        try:
            text = template.render((), prompt=prompt, suffix=suffix, think=chat.think,
                                   think_level=chat.think_level, limits=limits)
        except LimitExceeded as exc:
            raise ValueError(f"cannot render the prompt with the model's template: "
                             f"{work_limits.describe(exc)}") from None
        except TemplateError as exc:
            raise ValueError(f"cannot render the prompt with the model's template: {exc}") from None
        tokens = self.model.vocab.tokenize(text, add_special=True, parse_special=True)
        if not chat.truncate:
            PromptTooLong.check(len(tokens), num_ctx)
        request = GenerationRequest(
            id=chat.id, prompt=tuple(tokens), sampling=chat.sampling, grammar=self.grammar(chat.format),
            truncate=chat.truncate, logprobs=chat.logprobs, top_logprobs=chat.top_logprobs)
        return PreparedChat(request=request, applied=RenderedPrompt(prompt=text))

    def _apply(self, chat: ChatRequest, messages: list[dict[str, Any]]) -> ChatApplied:
        try:
            # Reasoning is always split off, even with thinking off (the server drops it then), so a model
            # that reasons anyway does not leak it into its answer. Several calls in one answer are allowed,
            # as Ollama allows them, where the template can say so.
            return self.templates.apply(
                messages, tools=list(chat.tools) or None, tool_choice=chat.tool_choice if chat.tools else "auto",
                enable_thinking=chat.think is not False, reasoning_format="deepseek", parallel_tool_calls=True,
                chat_template_kwargs=_reasoning_effort(chat.think_level))
        except ShimError as exc:
            raise ValueError(f"cannot render the conversation with the model's template: {exc}") from None

    def _generation_prompt_tokens(self, text: str) -> tuple[int, ...]:
        """The generation prompt as the grammar will see it (common/sampling.cpp does the same)."""
        tokens = self.model.vocab.tokenize(text, add_special=False, parse_special=True)
        if tokens and text and not text[0].isspace() and self.model.vocab.token_to_piece(
                tokens[0], special=True)[:1].isspace():
            tokens = tokens[1:]  # some tokenizers put a space before the first special token
        return tuple(tokens)

    def _single_tokens(self, texts: tuple[str, ...]) -> frozenset[int]:
        ids: set[int] = set()
        for text in texts:
            tokens = self.model.vocab.tokenize(text, add_special=False, parse_special=True)
            if len(tokens) == 1:
                ids.add(tokens[0])
        return frozenset(ids)


def _render_tokens(render: Callable[[list[dict[str, Any]]], _R], tokenize: Callable[[str], list[int]],
                   messages: list[dict[str, Any]]) -> tuple[_R, list[int]]:
    rendered = render(messages)
    try:
        return rendered, tokenize(rendered.prompt)
    except BaseException:
        rendered.close()
        raise


def _with_images(prepared: PreparedChat, pictures: vision.VisionPrompt | None) -> PreparedChat:
    """The request with the chunks of the images its prompt kept."""
    if pictures is None:
        return prepared
    request = msgspec.structs.replace(prepared.request, images=pictures.images(prepared.request.prompt))
    return PreparedChat(request=request, applied=prepared.applied)


async def chat(runner: Runner, prepared: PreparedChat) -> AsyncIterator[ChatEvent]:
    """Streams the answer to a prepared conversation.

    Content and reasoning come as deltas while the answer grows; tool calls
    come whole, at the end, as Ollama sends them. Each token is read once
    (plain content passes as it is; a Go template's answer goes through one
    reader that keeps its place); only the end parses the whole answer.
    """
    raw: list[str] = []
    sent_content = sent_thinking = ""
    applied = prepared.applied
    step = _stepper(applied)
    try:
        async with aclosing(runner.submit(prepared.request)) as events:
            async for event in events:
                raw.append(event.text)
                if isinstance(event, Done):
                    message = _parse(applied, "".join(raw), partial=False) if applied else _Message(
                        "".join(raw), "", ())
                    content, thinking = message.content, message.reasoning
                    tail_content = _extension(sent_content, content)
                    tail_thinking = _extension(sent_thinking, thinking)
                    if tail_content or tail_thinking:
                        yield ChatDelta(content=tail_content, thinking=tail_thinking)
                    calls = tuple(c if c.id else ToolCall(c.name, c.arguments, _call_id()) for c in message.tool_calls)
                    yield ChatDone(done=event, content=content, thinking=thinking, tool_calls=calls)
                    return
                assert isinstance(event, Token)
                new_content, new_thinking = step(event.text, raw) if event.text else ("", "")
                sent_content += new_content
                sent_thinking += new_thinking
                if new_content or new_thinking or event.logprob is not None:
                    yield ChatDelta(content=new_content, thinking=new_thinking, logprob=event.logprob)
    finally:
        if applied is not None:
            applied.close()


_Step = Callable[[str, list[str]], tuple[str, str]]


def _stepper(applied: ChatApplied | RenderedPrompt | None) -> _Step:
    """How one token's text becomes (content, reasoning) deltas for this answer."""
    if applied is None or (isinstance(applied, ChatApplied) and applied.plain) or (
            isinstance(applied, RenderedPrompt) and applied.thinking_tags is None and not applied.tool_names):
        return lambda text, _raw: (text, "")
    if isinstance(applied, RenderedPrompt):
        reader = GoAnswer(applied)
        return lambda text, _raw: reader.feed(text)
    sent = ["", ""]

    def reparse(_text: str, raw: list[str]) -> tuple[str, str]:
        # llama.cpp's parsers read a whole answer (llama-server reads it again each token too); in C++
        # with the parser loaded once, that costs little next to a decode.
        message = _parse(applied, "".join(raw), partial=True)
        content, thinking = _extension(sent[0], message.content), _extension(sent[1], message.reasoning)
        sent[0] += content
        sent[1] += thinking
        return content, thinking

    return reparse


def _call_id() -> str:
    """An id in Ollama's shape for a call the model did not name (routes.go toolCallId)."""
    return "call_" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _extension(sent: str, now: str) -> str:
    """What `now` adds to what was sent; nothing while a partial parse disagrees with it."""
    return now[len(sent):] if now.startswith(sent) else ""


@dataclass(frozen=True)
class _Message:
    content: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]


def _parse(applied: ChatApplied | RenderedPrompt, text: str, *, partial: bool) -> _Message:
    try:
        parsed = applied.parse(text, partial=partial)
    except ShimError as exc:
        if partial:
            return _Message("", "", ())
        # Better the model's words as they are than an error after the whole answer.
        log.warning("could not parse the answer as the template's format (%s); returning it as content", exc)
        return _Message(text, "", ())
    return _Message(parsed.content, parsed.reasoning, parsed.tool_calls)
