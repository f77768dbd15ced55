"""Decoding request bodies and encoding responses, one codec per type.

msgspec's validation messages already name the field (``at `$.options.num_ctx` ``);
they are passed on as they are, so a client learns what to fix.

A decoded body is also held to bounds msgspec does not keep, so that nothing a
client sends fails later, deeper in the stack, as a 500: UTF-8 throughout, at
most MAX_DEPTH levels of nesting (orjson, which hands schemas and tools to
llama.cpp, stops at 255; msgspec near Python's recursion limit) and integers of
64 bits (a field typed `Any` or `int` keeps integers of any size; orjson,
ctypes and C take 64 bits).

Decoding is as lenient as Ollama's Go decoder, where Go would accept what
msgspec refuses: `null` on any field means the field is absent (Go leaves the
zero value, and our defaults are Ollama's), and an integer option given as a
number with a fraction is cut to an integer (`options` are a map that
`FromMap` fills by reflection, taking every JSON number as a float64). Bodies
msgspec takes as they are never pay for this; the rest are decoded once more,
relaxed, and checked again, so an error still names the field.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from ollama_py.api.options import LoadOptions

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
        try:
            value = _decoder(kind).decode(body)
        except msgspec.ValidationError as strict:
            value = _relaxed_decode(body, kind, strict)
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


def _relaxed_decode(body: bytes, kind: Any, strict: msgspec.ValidationError) -> Any:
    """The body decoded as Go would: nulls dropped where a field takes none, fractional integer options cut.

    Raises msgspec.ValidationError (naming the field) for what Go refuses too; `strict`, the typed
    decoder's own error, where the body is no JSON value at all (a number beyond a float), since only
    that one knows the field.
    """
    try:
        raw = msgspec.json.decode(body)
    except msgspec.ValidationError:
        raise strict from None
    return msgspec.convert(_relax(raw, _type_info(kind)), kind)


_infos: dict[Any, mi.Type] = {}


def _type_info(kind: Any) -> mi.Type:
    info = _infos.get(kind)
    if info is None:
        info = _infos[kind] = mi.type_info(kind)
    return info


def _relax(value: Any, info: mi.Type) -> Any:
    """`value` with Go's leniencies applied where `info` says what the field is; the rest left to msgspec."""
    if isinstance(info, mi.UnionType):
        info = _branch(value, info)
    if isinstance(value, dict) and isinstance(info, mi.StructType):
        options = issubclass(info.cls, LoadOptions)
        for field in info.fields:
            key = field.encode_name
            if key not in value:
                continue
            item = value[key]
            if item is None and not _takes_none(field.type):
                del value[key]  # Go leaves the field as it was: our default
            elif options and isinstance(item, float) and _takes_int(field.type) and math.isfinite(item):
                value[key] = max(_INT_MIN, min(math.trunc(item), _INT_END - 1))  # Go's int(float64) truncates
            else:
                value[key] = _relax(item, field.type)
    elif isinstance(value, list) and isinstance(info, mi.ListType):
        for i, item in enumerate(value):
            value[i] = _relax(item, info.item_type)
    return value


def _branch(value: Any, union: mi.UnionType) -> mi.Type:
    """The member of a union a JSON value decodes as, where the shape decides it; the union itself otherwise."""
    if isinstance(value, dict):
        structs = [t for t in union.types if isinstance(t, mi.StructType)]
        if len(structs) > 1 and structs[0].tag_field is not None:
            tag = value.get(structs[0].tag_field)
            structs = [t for t in structs if t.tag == tag]
        if len(structs) == 1:
            return structs[0]
    if isinstance(value, list):
        lists = [t for t in union.types if isinstance(t, mi.ListType)]
        if len(lists) == 1:
            return lists[0]
    return union


def _takes_none(info: mi.Type) -> bool:
    return isinstance(info, (mi.NoneType, mi.AnyType)) or (
        isinstance(info, mi.UnionType) and any(isinstance(t, (mi.NoneType, mi.AnyType)) for t in info.types))


def _takes_int(info: mi.Type) -> bool:
    members = info.types if isinstance(info, mi.UnionType) else (info,)
    return any(isinstance(t, mi.IntType) for t in members) and not any(isinstance(t, mi.FloatType) for t in members)


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
