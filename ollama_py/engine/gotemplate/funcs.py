"""The builtin functions of Go templates (and, or and the others of text/template's funcs.go), with Go's
argument checks and error messages, and `printf`'s verbs as Go's fmt writes them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ollama_py.engine.gotemplate.values import Stringer, format_float, format_value, truth, type_name


class FunctionError(Exception):
    """A template function's complaint, reported as `error calling NAME: ...` at the call's position."""


@dataclass(frozen=True)
class Function:
    """A function templates may call, with the argument counts Go would check against its signature."""

    fn: Callable[..., Any]
    min_args: int
    max_args: int | None


def _kind(value: Any) -> str:
    """Go's basicKind, for comparisons: bool, int, float, string, nil, or something not comparable by eq/lt."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise FunctionError("missing argument for comparison")
    k1 = _kind(first)
    for other in others:
        k2 = _kind(other)
        if k1 != k2:
            if first is not None and other is not None:
                raise FunctionError("incompatible types for comparison")
        elif k1 == "other":
            raise FunctionError(f"non-comparable type {type_name(first)}")
        elif first == other:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _lt(a: Any, b: Any) -> bool:
    k1, k2 = _kind(a), _kind(b)
    if k1 in ("nil", "other", "bool") or k2 in ("nil", "other", "bool"):
        raise FunctionError("invalid type for comparison")
    if k1 != k2:
        raise FunctionError("incompatible types for comparison")
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _gt(a: Any, b: Any) -> bool:
    return not _le(a, b)


def _ge(a: Any, b: Any) -> bool:
    return not _lt(a, b)


def _not(value: Any) -> bool:
    return not truth(value)


def _len(value: Any) -> int:
    if value is None:
        raise FunctionError("len of nil pointer")
    if isinstance(value, str):
        return len(value.encode())  # Go counts bytes
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    raise FunctionError(f"len of type {type_name(value)}")


def _int_index(index: Any, cap: int) -> int:
    if index is None:
        raise FunctionError("cannot index slice/array with nil")
    if not isinstance(index, int) or isinstance(index, bool):
        raise FunctionError(f"cannot index slice/array with type {type_name(index)}")
    if index < 0 or index > cap:
        raise FunctionError(f"index out of range: {index}")
    return index


def _index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise FunctionError("index of untyped nil")
    for index in indexes:
        if item is None:
            raise FunctionError("index of nil pointer")
        if isinstance(item, dict):
            if not isinstance(index, str):
                raise FunctionError(f"value has type {type_name(index)}; should be string")
            item = item.get(index)
        elif isinstance(item, (str, list, tuple)):
            seq = item.encode() if isinstance(item, str) else item
            i = _int_index(index, len(seq))
            if i == len(seq):
                raise FunctionError(f"index out of range: {i}")
            item = seq[i]
        else:
            raise FunctionError(f"can't index item of type {type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise FunctionError("slice of untyped nil")
    if len(indexes) > 3:
        raise FunctionError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise FunctionError("cannot 3-index slice a string")
        seq: Any = item.encode()
    elif isinstance(item, (list, tuple)):
        seq = item
    else:
        raise FunctionError(f"can't slice item of type {type_name(item)}")
    bounds = [0, len(seq), len(seq)]
    for i, index in enumerate(indexes):
        bounds[i] = _int_index(index, len(seq))
    if bounds[0] > bounds[1]:
        raise FunctionError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    if len(indexes) == 3 and bounds[1] > bounds[2]:
        raise FunctionError(f"invalid slice index: {bounds[1]} > {bounds[2]}")
    part = seq[bounds[0]:bounds[1]]
    return part.decode("utf-8", errors="replace") if isinstance(item, str) else part


def _sprint(*args: Any) -> str:
    """fmt.Sprint: a space between two operands when neither is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(format_value(arg))
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(format_value(a) for a in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?(.)", re.DOTALL)


def _go_quote(s: str) -> str:
    """strconv.Quote: a double-quoted Go string literal, printable characters kept."""
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(c)])
        elif c.isprintable() or c == " ":
            out.append(c)
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out) + '"'


def _pad(text: str, flags: str, width: str | None) -> str:
    if width is None or len(text) >= int(width):
        return text
    if "-" in flags:
        return text.ljust(int(width))
    if "0" not in flags:
        return text.rjust(int(width))
    sign = text[0] if text[:1] in "+-" else ""
    return sign + text[len(sign):].rjust(int(width) - len(sign), "0")


def _format_one(verb: str, flags: str, precision: str | None, arg: Any) -> str | None:
    """One printf verb applied to one argument, or None when the verb does not fit the argument's type."""
    plus = "+" if "+" in flags else ""
    if verb == "v":
        return format_value(arg)
    if verb == "s" and isinstance(arg, (str, Stringer)):
        text = arg if isinstance(arg, str) else arg.go_string()
        return text[:int(precision or 0)] if precision is not None else text
    if verb == "q" and isinstance(arg, str):
        return _go_quote(arg)
    if verb == "t" and isinstance(arg, bool):
        return "true" if arg else "false"
    if isinstance(arg, bool) or arg is None:
        return None
    if isinstance(arg, int):
        if verb == "d":
            return f"{arg:{plus}d}"
        if verb in "xXob":
            return format(arg, verb)
        if verb == "c":
            return chr(arg)
        if verb == "q":
            return "'" + _go_quote(chr(arg))[1:-1] + "'"
        return None
    if isinstance(arg, float):
        digits = 6 if precision is None else int(precision or 0)
        if verb in "fFeE":
            return f"{arg:{plus}.{digits}{verb}}"
        if verb in "gG":
            if precision is not None:
                return f"{arg:{plus}.{digits}{verb}}"
            return ("+" if plus and arg >= 0 else "") + format_float(arg)
        return None
    if isinstance(arg, str) and verb in "xX":
        return arg.encode().hex() if verb == "x" else arg.encode().hex().upper()
    return None


def _too_large(digits: str | None) -> bool:
    """Go's fmt refuses a width or precision over 1e6 (tooLarge): a template cannot pad its way to gigabytes."""
    return digits is not None and digits != "" and (len(digits) > 7 or int(digits) > 1_000_000)


def _sprintf(fmt: Any, *args: Any) -> str:
    """fmt.Sprintf for the common verbs (%v %s %q %d %t %f %e %g %x %c), with Go's %!verb(type=value) on misuse."""
    if not isinstance(fmt, str):
        raise FunctionError(f"wrong type for value; expected string; got {type_name(fmt)}")
    out: list[str] = []
    pos = 0
    arg_i = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, precision, verb = m.groups()
        if _too_large(width):
            out.append("%!(BADWIDTH)")
            width = None
        if _too_large(precision):
            out.append("%!(BADPREC)")
            precision = None
        if verb == "%":
            out.append("%")
            continue
        if arg_i >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[arg_i]
        arg_i += 1
        text = _format_one(verb, flags, precision, arg)
        if text is None:
            out.append(f"%!{verb}({type_name(arg)}={format_value(arg)})")
        else:
            out.append(_pad(text, flags, width))
    out.append(fmt[pos:])
    if arg_i < len(args):
        extra = ", ".join(f"{type_name(a)}={format_value(a)}" for a in args[arg_i:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _html(*args: Any) -> str:
    text = args[0] if len(args) == 1 and isinstance(args[0], str) else _sprint(
        *("<no value>" if a is None else a for a in args))
    return (text.replace("&", "&amp;").replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("\x00", "\ufffd"))


# `and` and `or` stop at the first argument that decides them, so the executor evaluates them itself.
LAZY = frozenset({"and", "or"})
BUILTINS: dict[str, Function] = {
    "not": Function(_not, 1, 1),
    "len": Function(_len, 1, 1),
    "index": Function(_index, 1, None),
    "slice": Function(_slice, 1, None),
    "eq": Function(_eq, 1, None),
    "ne": Function(_ne, 2, 2),
    "lt": Function(_lt, 2, 2),
    "le": Function(_le, 2, 2),
    "gt": Function(_gt, 2, 2),
    "ge": Function(_ge, 2, 2),
    "print": Function(_sprint, 0, None),
    "printf": Function(_sprintf, 1, None),
    "println": Function(_sprintln, 0, None),
    "html": Function(_html, 0, None),
}
