"""Decoding request bodies and encoding responses, one codec per type.

msgspec's validation messages already name the field (``at `$.options.num_ctx` ``);
they are passed on as they are, so a client learns what to fix.

A decoded body is also held to bounds msgspec does not keep, so that nothing a
client sends fails later, deeper in the stack, as a 500: UTF-8 throughout, at
most MAX_DEPTH levels of nesting (orjson, which hands schemas and tools to
llama.cpp, stops at 255; msgspec near Python's recursion limit) and integers of
64 bits (a field typed `Any` or `int` keeps integers of any size; orjson,
ctypes and C take 64 bits).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()

# Deeper than any JSON schema or tool definition we have seen, and well inside what
# orjson (255) and llama.cpp's recursive schema and template code take once wrapped.
MAX_DEPTH = 128
_INT_MIN, _INT_END = -(2**63), 2**64  # int64 and uint64 together: what orjson encodes
_SCALARS = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = (list, tuple, dict, msgspec.Struct)


class BadRequest(ValueError):
    """A body that is not JSON, or not of the request's shape: a 400 for the client."""


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder


def decode(body: bytes, kind: type[T]) -> T:
    """The body as `kind`, or BadRequest saying what is wrong and where."""
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        value = _decoder(kind).decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    except RecursionError:  # msgspec's own limit, in fields it skips too
        raise BadRequest(f"invalid JSON: nested deeper than {MAX_DEPTH} levels") from None
    if not body.isascii():
        _check_utf8(body)
    _check_bounds(value)
    return value  # type: ignore[no-any-return]


def _check_utf8(body: bytes) -> None:
    """msgspec checks the strings it keeps; RFC 8259 asks the whole body to be UTF-8, unknown fields too."""
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        raise BadRequest(f"invalid JSON: not UTF-8 at byte {exc.start}") from None


def _check_bounds(value: Any) -> None:
    """BadRequest if the decoded `value` nests deeper than MAX_DEPTH or holds an integer beyond 64 bits.

    Only what was kept is walked (msgspec drops unknown fields), a level at a
    time, in C where it can be: the types of a container's items are taken in
    one go, so a long list of strings or tokens costs little and a long string nothing.
    """
    level: list[Any] = [(value,)]  # what sits at `depth`; the body is at 1
    for depth in range(MAX_DEPTH + 1):
        below: list[Any] = []
        for node in level:
            if isinstance(node, (list, tuple)):
                items: Any = node
            elif isinstance(node, dict):
                items = node.values()
            elif isinstance(node, msgspec.Struct):
                items = msgspec.structs.astuple(node)
            else:
                continue  # not a container
            kinds = set(map(type, items))
            if int in kinds:
                numbers = items if len(kinds) == 1 else [item for item in items if type(item) is int]
                low, high = min(numbers), max(numbers)
                if low < _INT_MIN or high >= _INT_END:
                    raise _too_big(low if low < _INT_MIN else high)
            if kinds <= _SCALARS:
                continue
            if depth == MAX_DEPTH and any(isinstance(item, _CONTAINERS) for item in items):
                raise BadRequest(f"invalid JSON: nested deeper than {MAX_DEPTH} levels")
            below.extend(filter(None, items) if kinds.isdisjoint(_SCALARS) else  # empty ones hold nothing
                         [item for item in items if item and type(item) not in _SCALARS])
        if not below:
            return
        level = below


def _too_big(number: int) -> BadRequest:
    shown = f"the integer {number}" if number.bit_length() <= 128 else f"an integer of {number.bit_length()} bits"
    return BadRequest(f"invalid JSON: {shown} does not fit in 64 bits")


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def encode_line(value: Any) -> bytes:
    """One NDJSON line."""
    buf = bytearray()
    _encoder.encode_into(value, buf)
    buf += b"\n"
    return bytes(buf)
