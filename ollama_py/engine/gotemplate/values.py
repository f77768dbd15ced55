"""Go values as templates see them: truth, `%v` printing and `encoding/json`, for Python data standing in for Go's.

str, bool, int, float and None (a nil interface) are themselves; list and tuple are slices; dict is a map
(printed, ranged and marshalled in key order, as Go sorts map keys); `Struct` is a Go struct with its JSON
tags; a `Stringer` prints what its String method returns; a `Nil` slice or map is empty but marshals as null.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class StructType:
    """A Go struct type: its name (for error messages), its fields as (Go name, JSON key, omitempty), and
    whether it has a String method that returns its JSON (printing it then prints JSON)."""

    name: str
    fields: tuple[tuple[str, str, bool], ...]
    json_string: bool = False

    @cached_property
    def field_names(self) -> frozenset[str]:
        return frozenset(name for name, _, _ in self.fields)

    def __call__(self, **values: Any) -> Struct:
        unknown = set(values) - self.field_names
        if unknown:
            raise TypeError(f"{self.name} has no fields {sorted(unknown)}")
        return Struct(self, values)


class Struct:
    """A Go struct value: fields by Go name, read by `.Name`, always true, marshalled by its JSON tags."""

    __slots__ = ("type", "values")

    def __init__(self, type_: StructType, values: Mapping[str, Any]) -> None:
        self.type = type_
        self.values = dict(values)

    def __repr__(self) -> str:
        return f"{self.type.name}({self.values!r})"


class Stringer:
    """A Go value whose type has a String method: printing it prints what String returns."""

    def go_string(self) -> str:
        raise NotImplementedError


class JSONMap(dict[str, Any], Stringer):
    """A Go map whose String method is its JSON (Ollama's tool arguments and tool properties)."""

    def go_string(self) -> str:
        return go_json(self)


class JSONList(list[Any], Stringer):
    """A Go slice whose String method is its JSON (Ollama's tool list)."""

    def go_string(self) -> str:
        return go_json(self)


class OrderedMap(dict[str, Any]):
    """A Go map type that keeps insertion order (Ollama's nested tool properties), for range and JSON alike."""


class PropertyType(tuple[str, ...], Stringer):
    """Ollama's PropertyType: a JSON-schema type list that prints and marshals as a string when it has one entry."""

    def go_string(self) -> str:
        if len(self) == 1:
            return self[0]
        return "" if not self else "[" + " ".join(self) + "]"


class Nil:
    """Mixed into an empty tuple, list or dict: a nil Go slice or map, empty in every way but JSON `null`."""


class NilSlice(tuple[Any, ...], Nil):
    """A nil Go slice (a message without tool calls or images)."""


class UnsupportedValue(ValueError):
    """A value Go's JSON encoder refuses (NaN, infinities, things with no JSON form)."""


def go_json(value: Any) -> str:
    """`json.Marshal` as Go writes it: compact, map keys sorted, `<>&` escaped, struct fields by their tags."""
    parts: list[str] = []
    _json_into(value, parts)
    return "".join(parts)


def _json_into(value: Any, out: list[str]) -> None:
    if value is None or isinstance(value, Nil):
        out.append("null")
    elif value is True or value is False:
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_json_float(value))
    elif isinstance(value, str):
        out.append(_json_string(value))
    elif isinstance(value, Struct):
        out.append("{")
        first = True
        for name, key, omitempty in value.type.fields:
            field = value.values.get(name)
            if omitempty and _is_empty(field):
                continue
            if not first:
                out.append(",")
            first = False
            out.append(_json_string(key) + ":")
            _json_into(field, out)
        out.append("}")
    elif isinstance(value, PropertyType) and len(value) == 1:
        out.append(_json_string(value[0]))
    elif isinstance(value, dict):
        keys = list(value) if isinstance(value, OrderedMap) else sorted(value)
        out.append("{")
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            out.append(_json_string(str(key)) + ":")
            _json_into(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _json_into(item, out)
        out.append("]")
    else:
        raise UnsupportedValue(f"json: unsupported type {type_name(value)}")


def _is_empty(value: Any) -> bool:
    """Go's `omitempty`: false, 0, "", nil and empty slices and maps are left out; structs never are."""
    if value is None or value is False:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) == 0
    return False


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f",
                 "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_NEEDS_ESCAPE = re.compile(r'["\\<>&\u2028\u2029\x00-\x1f\ud800-\udfff]')


def _json_string(s: str) -> str:
    def escape(m: re.Match[str]) -> str:
        c = m.group()
        if c in _JSON_ESCAPES:
            return _JSON_ESCAPES[c]
        if "\ud800" <= c <= "\udfff":
            return "\ufffd"  # Go writes invalid UTF-8 as the replacement character
        return f"\\u{ord(c):04x}"

    return '"' + _JSON_NEEDS_ESCAPE.sub(escape, s) + '"'


def _shortest(f: float) -> tuple[str, int]:
    """The shortest decimal digits that read back as f, and the position of the decimal point in them."""
    _, digits, exponent = Decimal(repr(abs(f))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    return text, len(text) + exponent


def _fixed(digits: str, point: int) -> str:
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def _exponent(digits: str, point: int) -> str:
    exp = point - 1
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def _json_float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise UnsupportedValue(f"json: unsupported value: {format_float(f)}")
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign = "-" if f < 0 else ""
    digits, point = _shortest(f)
    if abs(f) < 1e-6 or abs(f) >= 1e21:
        return sign + re.sub(r"e([+-])0(\d)$", r"e\1\2", _exponent(digits, point))
    return sign + _fixed(digits, point)


def format_float(f: float) -> str:
    """Go's %v for a float64: the shortest digits, as an exponent below 1e-4 and from 1e6 on (`1e+06`)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign = "-" if f < 0 else ""
    digits, point = _shortest(f)
    if point - 1 < -4 or point - 1 >= 6:
        return sign + _exponent(digits, point)
    return sign + _fixed(digits, point)


def type_name(value: Any) -> str:
    """The Go type a value stands for, as Go's error messages name it."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Struct):
        return value.type.name
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    return type(value).__name__


def format_value(value: Any) -> str:
    """Go's `%v` (what `print` and an action write): Stringers by their String, structs as `{a b}`, maps sorted."""
    if isinstance(value, Stringer):
        return value.go_string()
    if value is None:
        return "<nil>"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, (str, int)):
        return str(value)
    if isinstance(value, Struct):
        if value.type.json_string:
            return go_json(value)
        return "{" + " ".join(format_value(value.values.get(name)) for name, _, _ in value.type.fields) + "}"
    if isinstance(value, dict):
        keys = list(value) if isinstance(value, OrderedMap) else sorted(value)
        return "map[" + " ".join(f"{k}:{format_value(value[k])}" for k in keys) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(format_value(v) for v in value) + "]"
    return str(value)


def truth(value: Any) -> bool:
    """Go's template truth: false, 0, nil and empty strings, slices and maps are false; structs are true."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float)):
        return value != 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True
