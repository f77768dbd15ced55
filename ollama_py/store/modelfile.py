"""Modelfiles: parsed as Ollama parses them, written back for `show --modelfile`.

The grammar follows Ollama's parser/parser.go: instruction names are letters,
case-insensitive; a value is the rest of the line, or a value in single or
triple double quotes that may span lines and ends at a closing quote followed by
whitespace or the end of the file; `#` at the start of a line is a comment.
Where Ollama quietly accepts a mistake (text after a closing quote), we
report it with its line number instead. A second FROM is no mistake: it
names a vision model's projector, and the store checks that it is one.

DRAFT names a smaller model with the same vocabulary that proposes tokens
for the model to verify (engine/draft_model.py; llama-server's
`--model-draft`): a GGUF path, as Ollama takes it, or a model name.
"""

from __future__ import annotations

import bisect
import logging
import re

import msgspec

log = logging.getLogger(__name__)

ParamValue = int | float | bool | str | list[str]

# Ollama's options a PARAMETER may set (api.Options and api.Runner), with their types.
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int, "use_mmap": bool, "num_thread": int,
    "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float, "min_p": float,
    "typical_p": float, "repeat_last_n": int, "temperature": float, "repeat_penalty": float,
    "presence_penalty": float, "frequency_penalty": float, "stop": list,
}
# Accepted and dropped with a warning, as Ollama does, so old Modelfiles still build.
DEPRECATED_PARAMETERS = frozenset({
    "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
    "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z",
})
INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "DRAFT")
# Ollama instructions that select machinery ollama-py does not have; named so the error can say so.
UNSUPPORTED_INSTRUCTIONS = ("RENDERER", "PARSER", "REQUIRES")
MESSAGE_ROLES = ("system", "user", "assistant")

_WORD = re.compile(r"[A-Za-z]+")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_]+")
_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class ModelfileError(ValueError):
    """A Modelfile that cannot be used; the message starts with the line at fault."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class Modelfile(msgspec.Struct, kw_only=True):
    """What a Modelfile asks for; `from_` is a model name, a file path or a blob path."""

    from_: str
    # Further FROM lines: a vision model's projector (an mmproj GGUF) beside its weights, as Ollama takes them.
    projectors: list[str] = msgspec.field(default_factory=list)
    parameters: dict[str, ParamValue] = msgspec.field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    adapters: list[str] = msgspec.field(default_factory=list)
    licenses: list[str] = msgspec.field(default_factory=list)
    messages: list[Message] = msgspec.field(default_factory=list)
    # A draft model for speculative decoding: a GGUF path, or (ollama-py's own) a model name.
    draft: str | None = None


def convert_parameter(name: str, raw: str) -> ParamValue:
    """A PARAMETER value in the type Ollama stores it as (params layer JSON); ValueError names the problem."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise ValueError(f"unknown parameter '{name}'")
    if kind is int:
        if not _INT.fullmatch(raw):
            raise ValueError(f"parameter '{name}' needs a whole number, got {raw!r}")
        return int(raw)
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"parameter '{name}' needs a number, got {raw!r}") from None
    if kind is bool:
        if raw in _TRUE or raw in _FALSE:
            return raw in _TRUE
        raise ValueError(f"parameter '{name}' needs true or false, got {raw!r}")
    return [raw]


class _Text:
    """The Modelfile text with a cheap offset-to-line lookup for error messages."""

    def __init__(self, text: str) -> None:
        self.s = text
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def end_of_line(self, pos: int) -> int:
        end = self.s.find("\n", pos)
        return len(self.s) if end < 0 else end


def _skip_blanks(t: _Text, pos: int) -> int:
    while pos < len(t.s) and t.s[pos] in " \t":
        pos += 1
    return pos


def _word(t: _Text, pos: int, pattern: re.Pattern[str], what: str, instruction: str) -> tuple[str, int]:
    m = pattern.match(t.s, pos)
    if not m:
        found = t.s[pos:t.end_of_line(pos)].strip()
        raise ModelfileError(t.line(pos), f"{instruction} needs {what}" + (f", found {found[:40]!r}" if found else ""))
    end = m.end()
    if end >= len(t.s) or t.s[end] not in " \t":
        raise ModelfileError(t.line(pos), f"{instruction} {m.group()} needs a value after it")
    return m.group(), _skip_blanks(t, end)


def _value(t: _Text, pos: int, instruction: str) -> tuple[str, int]:
    """Reads a plain or quoted value starting at pos; returns it and the offset after it."""
    s = t.s
    delim = '"""' if s.startswith('"""', pos) else '"' if s.startswith('"', pos) else ""
    if not delim:
        end = t.end_of_line(pos)
        value = s[pos:end].strip()
        if not value:
            raise ModelfileError(t.line(pos), f"{instruction} needs a value")
        return value, end
    search = pos + len(delim)
    while True:
        close = s.find(delim, search)
        if close < 0:
            raise ModelfileError(t.line(pos), f"unclosed {delim} in {instruction}: the quoted value opened here "
                                              "never ends")
        after = close + len(delim)
        if after == len(s) or s[after] in " \t\n":
            break
        search = close + 1
    rest_end = t.end_of_line(after)
    if s[after:rest_end].strip():
        raise ModelfileError(t.line(after), f"unexpected text after the closing {delim}: "
                                            f"{s[after:rest_end].strip()[:40]!r}")
    return s[pos + len(delim):close], rest_end


def parse(text: str | bytes) -> Modelfile:
    """Parses Modelfile text; ModelfileError names the line at fault."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelfileError(None, f"the Modelfile is not UTF-8 text (byte {exc.start})") from None
    t = _Text(text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n"))
    s = t.s
    from_: tuple[str, int] | None = None
    parameters: dict[str, ParamValue] = {}
    out = Modelfile(from_="")
    pos = 0
    while True:
        while pos < len(s) and s[pos] in " \t\n":
            pos += 1
        if pos >= len(s):
            break
        if s[pos] == "#":
            pos = t.end_of_line(pos)
            continue
        line = t.line(pos)
        m = _WORD.match(s, pos)
        word = m.group() if m else s[pos:t.end_of_line(pos)].split()[0]
        instruction = word.upper()
        if not m or instruction not in INSTRUCTIONS:
            if instruction in UNSUPPORTED_INSTRUCTIONS:
                raise ModelfileError(line, f"{instruction} is an Ollama instruction that ollama-py does not support")
            raise ModelfileError(line, f"unknown instruction {word[:40]!r}; expected one of {', '.join(INSTRUCTIONS)}")
        pos = m.end()
        if pos >= len(s) or s[pos] not in " \t":
            raise ModelfileError(line, f"{instruction} needs a value")
        pos = _skip_blanks(t, pos)

        if instruction == "PARAMETER":
            name, pos = _word(t, pos, _PARAM_NAME, "a parameter name", instruction)
            raw, pos = _value(t, pos, f"PARAMETER {name}")
            key = name.lower()
            if key in DEPRECATED_PARAMETERS:
                log.warning("Modelfile line %d: parameter %s is deprecated and ignored", line, key)
                continue
            try:
                value = convert_parameter(key, raw)
            except ValueError as exc:
                raise ModelfileError(line, str(exc)) from None
            existing = parameters.get(key)
            parameters[key] = existing + value if isinstance(existing, list) and isinstance(value, list) else value
            continue
        if instruction == "MESSAGE":
            role, pos = _word(t, pos, _WORD, "a role (system, user or assistant)", instruction)
            if role.lower() not in MESSAGE_ROLES:
                raise ModelfileError(line, f"message role must be one of system, user or assistant, not {role!r}")
            content, pos = _value(t, pos, f"MESSAGE {role}")
            out.messages.append(Message(role.lower(), content))
            continue

        value, pos = _value(t, pos, instruction)
        if instruction == "FROM":
            if from_ is None:
                from_ = (value, line)
            else:
                out.projectors.append(value)
        elif instruction == "TEMPLATE":
            out.template = value
        elif instruction == "SYSTEM":
            out.system = value
        elif instruction == "ADAPTER":
            if out.adapters:
                raise ModelfileError(line, "only one ADAPTER is supported")
            out.adapters.append(value)
        elif instruction == "DRAFT":
            if out.draft is not None:
                raise ModelfileError(line, "only one DRAFT is supported")
            out.draft = value
        else:
            out.licenses.append(value)

    if from_ is None:
        raise ModelfileError(None, "no FROM line: a Modelfile must say which model it builds on")
    out.from_ = from_[0]
    out.parameters = parameters
    return out


def quote(value: str) -> str:
    """A value as it must be written so that `parse` reads it back unchanged."""
    plain = (value and "\n" not in value and value == value.strip() and not value.startswith('"'))
    if plain:
        return value
    for delim in ('"""', '"'):
        candidate = f"{delim}{value}{delim}"
        try:
            if _value(_Text(candidate), 0, "value")[0] == value:
                return candidate
        except ModelfileError:
            continue
    raise ValueError(f"{value[:40]!r}... cannot be written in a Modelfile (it holds a closing quote)")


def _format_parameter(value: int | float | bool | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return quote(str(value))


def render(modelfile: Modelfile, *, generated_for: str | None = None) -> str:
    """Modelfile text, in the order and form `ollama show --modelfile` prints."""
    lines = []
    if generated_for is not None:
        lines += ['# Modelfile generated by "ollama show"',
                  "# To build a new Modelfile based on this, replace FROM with:",
                  f"# FROM {generated_for}", ""]
    lines.append(f"FROM {quote(modelfile.from_)}")
    lines += [f"FROM {quote(p)}" for p in modelfile.projectors]
    if modelfile.template is not None:
        lines.append(f"TEMPLATE {quote(modelfile.template)}")
    if modelfile.system is not None:
        lines.append(f"SYSTEM {quote(modelfile.system)}")
    lines += [f"ADAPTER {quote(a)}" for a in modelfile.adapters]
    if modelfile.draft is not None:
        lines.append(f"DRAFT {quote(modelfile.draft)}")
    for name, value in modelfile.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {name} {_format_parameter(item)}")
    lines += [f"LICENSE {quote(text)}" for text in modelfile.licenses]
    lines += [f"MESSAGE {m.role} {quote(m.content)}" for m in modelfile.messages]
    return "\n".join(lines) + "\n"
