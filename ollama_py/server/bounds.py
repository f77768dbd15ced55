"""What one request may ask of a model, checked at the edge before the model is held.

Every bound is a setting (settings.py) and every refusal names it: a client
sees which limit it met and an operator which variable raises it. What can
only be measured where the prompt is rendered (template steps, grammar size)
is bounded in the runner process instead (engine/limits.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from ollama_py.api.codec import BadRequest
from ollama_py.server.errors import ApiError
from ollama_py.settings import Settings


def _text_bytes(value: Any) -> int:
    """The UTF-8 bytes of every string in a JSON-like value (keys too), walked without recursion."""
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item.encode("utf-8", "surrogatepass"))
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return total


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in a JSON-like value, walked without recursion."""
    deepest = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            deepest = max(deepest, depth)
            pending.extend((v, depth + 1) for v in item)
    return deepest


def text(settings: Settings, *parts: Any) -> None:
    """The request's text (prompt, system, suffix, messages, template, inputs) within OLLAMA_PY_MAX_PROMPT_BYTES:
    tokenizing and rendering cost grows with it, in the runner process's memory. 413 past it."""
    size = sum(_text_bytes(part) for part in parts)
    if size > settings.max_prompt_bytes:
        raise ApiError(413, f"the request's text is {size} bytes, more than this server allows "
                            f"({settings.max_prompt_bytes}, OLLAMA_PY_MAX_PROMPT_BYTES)")


def messages(settings: Settings, conversation: Iterable[Any]) -> None:
    count = sum(1 for _ in conversation)
    if count > settings.max_messages:
        raise BadRequest(f"messages: {count} messages, more than this server allows "
                         f"({settings.max_messages}, OLLAMA_PY_MAX_MESSAGES)")


def schema(settings: Settings, value: Any, field: str) -> None:
    """A JSON schema (`format`, a tool's parameters) within the depth and size bounds: the grammar made of
    it is paid for at every sampled token, by every stream on the model."""
    if not isinstance(value, (dict, list)):
        return
    depth = _depth(value)
    if depth > settings.max_schema_depth:
        raise BadRequest(f"{field}: the JSON schema nests {depth} levels deep, more than this server allows "
                         f"({settings.max_schema_depth}, OLLAMA_PY_MAX_SCHEMA_DEPTH)")
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise BadRequest(f"{field}: not a JSON schema the server can use: {exc}") from None
    if size > settings.max_schema_bytes:
        raise BadRequest(f"{field}: the JSON schema is {size} bytes, more than this server allows "
                         f"({settings.max_schema_bytes}, OLLAMA_PY_MAX_SCHEMA_BYTES)")


def stops(settings: Settings, stop: Iterable[str]) -> None:
    """Stop strings are matched against every generated piece: their count and length are bounded."""
    items = list(stop)
    if len(items) > settings.max_stop:
        raise BadRequest(f"options.stop: {len(items)} stop strings, more than this server allows "
                         f"({settings.max_stop}, OLLAMA_PY_MAX_STOP)")
    longest = max(map(len, items), default=0)
    if longest > settings.max_stop_length:
        raise BadRequest(f"options.stop: a stop string of {longest} characters, longer than this server allows "
                         f"({settings.max_stop_length}, OLLAMA_PY_MAX_STOP_LENGTH)")


def embed_inputs(settings: Settings, inputs: list[str]) -> None:
    if len(inputs) > settings.max_embed_inputs:
        raise BadRequest(f"input: {len(inputs)} inputs, more than this server allows "
                         f"({settings.max_embed_inputs}, OLLAMA_PY_MAX_EMBED_INPUTS)")
    text(settings, inputs)
