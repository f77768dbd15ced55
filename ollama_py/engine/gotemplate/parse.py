"""Go's template lexer and parser: source text to a tree of nodes, with Go's trimming, scoping and errors.

The tree is immutable (frozen dataclasses, tuples for lists), so one parse serves every request and thread,
and Ollama's rewrites (appending `{{ .Response }}`, cutting after it) build new trees.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, NoReturn


class TemplateError(ValueError):
    """A template that does not parse or does not execute; the message names the line and column."""

    def __init__(self, message: str, source: str = "", pos: int | None = None) -> None:
        if pos is not None:
            line = source.count("\n", 0, pos) + 1
            column = pos - (source.rfind("\n", 0, pos) + 1) + 1
            message = f"template: line {line}, column {column}: {message}"
        else:
            message = f"template: {message}"
        super().__init__(message)


# ---------------------------------------------------------------------------------------------------------------------
# Parse tree


@dataclass(frozen=True, slots=True)
class TextNode:
    pos: int
    text: str


@dataclass(frozen=True, slots=True)
class FieldNode:
    """`.A.B`: fields of dot."""

    pos: int
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VariableNode:
    """`$x.A.B`: a variable and the fields read from it."""

    pos: int
    name: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DotNode:
    pos: int


@dataclass(frozen=True, slots=True)
class NilNode:
    pos: int


@dataclass(frozen=True, slots=True)
class ConstNode:
    """A string, number, character or boolean literal."""

    pos: int
    value: Any
    text: str


@dataclass(frozen=True, slots=True)
class IdentifierNode:
    """A function name."""

    pos: int
    name: str


@dataclass(frozen=True, slots=True)
class ChainNode:
    """`(pipeline).A.B`: fields read from the value of a term that is not dot or a variable."""

    pos: int
    node: Node
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommandNode:
    pos: int
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class PipeNode:
    """`$x := a | b c`: declared (or assigned) variables and the commands, each fed the one before."""

    pos: int
    decl: tuple[str, ...]
    is_assign: bool
    cmds: tuple[CommandNode, ...]


@dataclass(frozen=True, slots=True)
class ActionNode:
    pos: int
    pipe: PipeNode


@dataclass(frozen=True, slots=True)
class IfNode:
    pos: int
    pipe: PipeNode
    body: tuple[Node, ...]
    else_body: tuple[Node, ...] | None


@dataclass(frozen=True, slots=True)
class RangeNode:
    pos: int
    pipe: PipeNode
    body: tuple[Node, ...]
    else_body: tuple[Node, ...] | None


@dataclass(frozen=True, slots=True)
class WithNode:
    pos: int
    pipe: PipeNode
    body: tuple[Node, ...]
    else_body: tuple[Node, ...] | None


@dataclass(frozen=True, slots=True)
class BreakNode:
    pos: int


@dataclass(frozen=True, slots=True)
class ContinueNode:
    pos: int


Node = (TextNode | FieldNode | VariableNode | DotNode | NilNode | ConstNode | IdentifierNode | ChainNode
        | CommandNode | PipeNode | ActionNode | IfNode | RangeNode | WithNode | BreakNode | ContinueNode)


# ---------------------------------------------------------------------------------------------------------------------
# Lexer


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    pos: int


_SPACE = " \t\r\n"
_KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"})


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def _skip_space(src: str, pos: int) -> int:
    while pos < len(src) and src[pos] in _SPACE:
        pos += 1
    return pos


def _at_right_delim(src: str, pos: int) -> tuple[bool, bool]:
    """Whether `}}` starts at pos, and whether it comes as ` -}}` (trimming the text after it)."""
    if pos + 1 < len(src) and src[pos] in _SPACE and src[pos + 1] == "-" and src.startswith("}}", pos + 2):
        return True, True
    return src.startswith("}}", pos), False


class _Lexer:
    """Go's lexer: text between actions (trimmed by `{{-` and `-}}`), and the tokens inside actions."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens: list[_Token] = []

    def error(self, message: str, pos: int) -> NoReturn:
        raise TemplateError(message, self.src, pos)

    def emit(self, kind: str, start: int, end: int) -> int:
        self.tokens.append(_Token(kind, self.src[start:end], start))
        return end

    def run(self) -> list[_Token]:
        src, pos = self.src, 0
        while True:
            left = src.find("{{", pos)
            if left < 0:
                if pos < len(src):
                    self.emit("text", pos, len(src))
                break
            inner = left + 2
            trim = inner + 1 < len(src) and src[inner] == "-" and src[inner + 1] in _SPACE
            end = pos + len(src[pos:left].rstrip(_SPACE)) if trim else left
            if end > pos:
                self.emit("text", pos, end)
            pos = inner + 2 if trim else inner
            if src.startswith("/*", pos):
                pos = self.comment(left, pos)
            else:
                self.tokens.append(_Token("{{", "{{", left))
                pos = self.action(left, pos)
        self.tokens.append(_Token("eof", "", len(src)))
        return self.tokens

    def comment(self, left: int, pos: int) -> int:
        close = self.src.find("*/", pos + 2)
        if close < 0:
            self.error("unclosed comment", left)
        pos = close + 2
        delim, trim = _at_right_delim(self.src, pos)
        if not delim:
            self.error("comment ends before closing delimiter", left)
        pos += 4 if trim else 2
        return _skip_space(self.src, pos) if trim else pos

    def action(self, left: int, pos: int) -> int:
        src = self.src
        depth = 0
        while True:
            delim, trim = _at_right_delim(src, pos)
            if delim:
                if depth:
                    self.error("unclosed left paren", pos)
                self.tokens.append(_Token("}}", "}}", pos))
                pos += 4 if trim else 2
                return _skip_space(src, pos) if trim else pos
            if pos >= len(src):
                self.error("unclosed action", left)
            c = src[pos]
            if c in _SPACE:
                start = pos
                pos = _skip_space(src, pos)
                if src.startswith("-}}", pos):
                    pos -= 1  # the last space belongs to the trim marker " -}}"
                    if pos == start:
                        continue
                pos = self.emit("space", start, pos)
            elif c == "=":
                pos = self.emit("=", pos, pos + 1)
            elif c == ":":
                if not src.startswith(":=", pos):
                    self.error("expected :=", pos)
                pos = self.emit(":=", pos, pos + 2)
            elif c == "|":
                pos = self.emit("|", pos, pos + 1)
            elif c == '"':
                pos = self.emit("string", pos, self.quoted(pos, '"', "unterminated quoted string"))
            elif c == "'":
                pos = self.emit("char", pos, self.quoted(pos, "'", "unterminated character constant"))
            elif c == "`":
                close = src.find("`", pos + 1)
                if close < 0:
                    self.error("unterminated raw quoted string", pos)
                pos = self.emit("rawstring", pos, close + 1)
            elif c == "$":
                pos = self.emit("variable", pos, self.word(pos + 1))
            elif c == "." and not (pos + 1 < len(src) and "0" <= src[pos + 1] <= "9"):
                end = self.word(pos + 1)
                pos = self.emit("dot" if end == pos + 1 else "field", pos, end)
            elif c in "+-." or "0" <= c <= "9":
                pos = self.emit("number", pos, self.number(pos))
            elif _is_alnum(c):
                end = self.word(pos)
                word = src[pos:end]
                kind = ("keyword" if word in _KEYWORDS else "bool" if word in ("true", "false")
                        else "nil" if word == "nil" else "identifier")
                pos = self.emit(kind, pos, end)
            elif c == "(":
                depth += 1
                pos = self.emit("(", pos, pos + 1)
            elif c == ")":
                depth -= 1
                if depth < 0:
                    self.error("unexpected right paren", pos)
                pos = self.emit(")", pos, pos + 1)
            elif c <= "\x7f" and c.isprintable():
                pos = self.emit("char_item", pos, pos + 1)
            else:
                self.error(f"unrecognized character in action: U+{ord(c):04X} {unicodedata.name(c, '')}", pos)

    def quoted(self, pos: int, quote: str, unterminated: str) -> int:
        src, i = self.src, pos + 1
        while True:
            if i >= len(src) or src[i] == "\n":
                self.error(unterminated, pos)
            if src[i] == "\\":
                i += 2
                continue
            if src[i] == quote:
                return i + 1
            i += 1

    def word(self, pos: int) -> int:
        """The end of the alphanumeric run at pos, which must end where a term may end."""
        end = pos
        while end < len(self.src) and _is_alnum(self.src[end]):
            end += 1
        if not self.at_terminator(end):
            self.error(f"bad character {self.src[end]!r}", end)
        return end

    def at_terminator(self, pos: int) -> bool:
        return pos >= len(self.src) or self.src[pos] in _SPACE + ".,|:()" or self.src.startswith("}}", pos)

    def number(self, pos: int) -> int:
        src, i = self.src, pos

        def accept(chars: str) -> bool:
            nonlocal i
            if i < len(src) and src[i] in chars:
                i += 1
                return True
            return False

        def accept_run(chars: str) -> None:
            while accept(chars):
                pass

        accept("+-")
        digits = "0123456789_"
        if accept("0"):
            if accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif accept("oO"):
                digits = "01234567_"
            elif accept("bB"):
                digits = "01_"
        accept_run(digits)
        if accept("."):
            accept_run(digits)
        if len(digits) == 11 and accept("eE"):
            accept("+-")
            accept_run("0123456789_")
        if len(digits) == 23 and accept("pP"):
            accept("+-")
            accept_run("0123456789_")
        if i < len(src) and _is_alnum(src[i]):
            self.error(f"bad number syntax: {src[pos:i + 1]!r}", pos)
        return i


# ---------------------------------------------------------------------------------------------------------------------
# Literals


_GO_ESCAPE = re.compile(r"\\(?:([abfnrtv\\'\"])|x([0-9a-fA-F]{2})|([0-7]{3})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")
_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}


def _unquote(text: str) -> str:
    """Go's strconv.Unquote for a literal: `"..."` or `'.'` with Go's escapes, or a raw `...`."""
    if text[0] == "`":
        return text[1:-1].replace("\r", "")
    body, quote = text[1:-1], text[0]
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        m = _GO_ESCAPE.match(body, i)
        if m is None or (m.group(1) is not None and m.group(1) in "'\"" and m.group(1) != quote):
            raise ValueError("invalid syntax")
        simple, hex_byte, octal, u4, u8 = m.groups()
        if simple is not None:
            out.append(_SIMPLE_ESCAPES[simple])
        elif hex_byte is not None:
            out.append(int(hex_byte, 16))
        elif octal is not None:
            if int(octal, 8) > 255:
                raise ValueError("invalid syntax")
            out.append(int(octal, 8))
        else:
            code = int(u4 or u8, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError("invalid syntax")
            out += chr(code).encode()
        i = m.end()
    return out.decode("utf-8", errors="replace")


def _number(text: str, kind: str) -> int | float:
    """A number literal as Go's template parser reads it: ints stay ints, anything with a point or exponent is a float."""
    if kind == "char":
        value = _unquote(text)
        if len(value) != 1:
            raise ValueError(f"malformed character constant: {text}")
        return ord(value)
    clean = text.replace("_", "")
    is_hex = clean.lstrip("+-")[:2].lower() == "0x"
    if not is_hex and any(c in clean for c in ".eE") or is_hex and any(c in clean for c in ".pP"):
        return float.fromhex(clean) if is_hex else float(clean)
    if re.fullmatch(r"[+-]?0[0-7]+", clean):
        return int(clean, 8)
    return int(clean, 0)


# ---------------------------------------------------------------------------------------------------------------------
# Parser


class _Else:
    """The `{{else}}` that ends the body of a control structure (never in a finished tree)."""

    def __init__(self, pos: int) -> None:
        self.pos = pos


class _End:
    """The `{{end}}` that ends a control structure (never in a finished tree)."""

    def __init__(self, pos: int) -> None:
        self.pos = pos


_OPERAND_START = frozenset({"bool", "char", "dot", "field", "identifier", "number", "nil", "rawstring", "string",
                            "variable", "("})
_TOKEN_NAMES = {"{{": "{{", "}}": "}}", "eof": "EOF", "space": "space"}


class _Parser:
    """Go's recursive-descent template parser over the lexer's tokens, with its variable scopes."""

    def __init__(self, src: str, funcs: Container[str]) -> None:
        self.src = src
        self.funcs = funcs
        self.tokens = _Lexer(src).run()
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0

    def error(self, message: str, pos: int) -> NoReturn:
        raise TemplateError(message, self.src, pos)

    def unexpected(self, token: _Token, context: str) -> NoReturn:
        shown = _TOKEN_NAMES.get(token.kind, repr(token.text))
        self.error(f"unexpected {shown} in {context}", token.pos)

    def next(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next_non_space(self) -> _Token:
        token = self.next()
        while token.kind == "space":
            token = self.next()
        return token

    def peek_non_space(self) -> _Token:
        token = self.next_non_space()
        self.i -= 1
        return token

    def expect(self, kind: str, context: str) -> _Token:
        token = self.next_non_space()
        if token.kind != kind:
            self.unexpected(token, context)
        return token

    def parse(self) -> tuple[Node, ...]:
        nodes: list[Node] = []
        while self.peek().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, (_Else, _End)):
                self.error(f"unexpected {{{{{'else' if isinstance(node, _Else) else 'end'}}}}}", node.pos)
            nodes.append(node)
        return tuple(nodes)

    def item_list(self, opener: _Token) -> tuple[tuple[Node, ...], _Else | _End]:
        nodes: list[Node] = []
        while self.peek_non_space().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, (_Else, _End)):
                return tuple(nodes), node
            nodes.append(node)
        self.error(f"unexpected EOF: {{{{{opener.text}}}}} has no matching {{{{end}}}}", opener.pos)

    def text_or_action(self) -> Node | _Else | _End:
        token = self.next_non_space()
        if token.kind == "text":
            return TextNode(token.pos, token.text)
        if token.kind == "{{":
            return self.action()
        self.unexpected(token, "input")

    def action(self) -> Node | _Else | _End:
        token = self.next_non_space()
        if token.kind == "keyword":
            word = token.text
            if word in ("if", "range", "with"):
                return self.control(token)
            if word == "else":
                chained = self.peek_non_space()
                if not (chained.kind == "keyword" and chained.text in ("if", "with")):
                    self.expect("}}", "else")
                return _Else(token.pos)
            if word == "end":
                self.expect("}}", "end")
                return _End(token.pos)
            if word in ("break", "continue"):
                if not self.range_depth:
                    self.error(f"{{{{{word}}}}} outside {{{{range}}}}", token.pos)
                self.expect("}}", f"{{{{{word}}}}}")
                return BreakNode(token.pos) if word == "break" else ContinueNode(token.pos)
            self.error(f"{{{{{word}}}}} is not supported in prompt templates", token.pos)
        self.i -= 1
        return ActionNode(token.pos, self.pipeline("command", "}}"))

    def control(self, opener: _Token) -> IfNode | RangeNode | WithNode:
        context = opener.text
        mark = len(self.vars)
        pipe = self.pipeline(context, "}}")
        if context == "range":
            self.range_depth += 1
        body, ending = self.item_list(opener)
        if context == "range":
            self.range_depth -= 1
        else_body: tuple[Node, ...] | None = None
        if isinstance(ending, _Else):
            chained = self.peek()
            if chained.kind == "keyword" and chained.text == context and context in ("if", "with"):
                # `{{else if x}}` is `{{else}}{{if x}}...{{end}}` with the inner {{end}} shared.
                self.next()
                else_body = (self.control(chained),)
            else:
                else_body, ending = self.item_list(opener)
                if not isinstance(ending, _End):
                    self.error("expected {{end}}; found {{else}}", ending.pos)
        del self.vars[mark:]
        if context == "if":
            return IfNode(opener.pos, pipe, body, else_body)
        if context == "range":
            return RangeNode(opener.pos, pipe, body, else_body)
        return WithNode(opener.pos, pipe, body, else_body)

    def pipeline(self, context: str, end: str) -> PipeNode:
        start = self.peek_non_space()
        decl: list[str] = []
        is_assign = False
        while self.peek_non_space().kind == "variable":
            before = self.i
            variable = self.next()
            following = self.peek_non_space()
            if following.kind in (":=", "="):
                self.next_non_space()
                is_assign = following.kind == "="
                decl.append(variable.text)
                self.vars.append(variable.text)
                break
            if following.kind == "char_item" and following.text == ",":
                self.next_non_space()
                decl.append(variable.text)
                self.vars.append(variable.text)
                if context == "range" and len(decl) < 2:
                    if self.peek_non_space().kind in ("variable", "}}", ")"):
                        continue
                    self.error("range can only initialize variables", following.pos)
                self.error(f"too many declarations in {context}", following.pos)
            self.i = before  # a variable used as a value, not declared
            break
        cmds: list[CommandNode] = []
        while True:
            token = self.next_non_space()
            if token.kind == end:
                if not cmds:
                    self.error(f"missing value for {context}", token.pos)
                for stage, cmd in enumerate(cmds[1:], start=2):
                    if isinstance(cmd.args[0], (ConstNode, DotNode, NilNode)):
                        self.error(f"non executable command in pipeline stage {stage}", cmd.pos)
                return PipeNode(start.pos, tuple(decl), is_assign, tuple(cmds))
            if token.kind not in _OPERAND_START:
                self.unexpected(token, context)
            self.i -= 1
            cmds.append(self.command())

    def command(self) -> CommandNode:
        start = self.peek_non_space()
        args: list[Node] = []
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            token = self.next()
            if token.kind == "space":
                continue
            if token.kind in ("}}", ")"):
                self.i -= 1
            elif token.kind != "|":
                self.unexpected(token, "operand")
            break
        if not args:
            self.error("empty command", start.pos)
        return CommandNode(start.pos, tuple(args))

    def operand(self) -> Node | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        fields: list[str] = []
        while self.peek().kind == "field":
            fields.append(self.next().text[1:])
        if isinstance(node, FieldNode):
            return FieldNode(node.pos, node.names + tuple(fields))
        if isinstance(node, VariableNode):
            return VariableNode(node.pos, node.name, node.fields + tuple(fields))
        if isinstance(node, (ConstNode, NilNode, DotNode)):
            self.error("unexpected . after term", node.pos)
        return ChainNode(node.pos, node, tuple(fields))

    def term(self) -> Node | None:
        token = self.next_non_space()
        kind = token.kind
        if kind == "identifier":
            if token.text not in self.funcs:
                self.error(f'function "{token.text}" not defined', token.pos)
            return IdentifierNode(token.pos, token.text)
        if kind == "dot":
            return DotNode(token.pos)
        if kind == "nil":
            return NilNode(token.pos)
        if kind == "variable":
            if token.text not in self.vars:
                self.error(f'undefined variable "{token.text}"', token.pos)
            return VariableNode(token.pos, token.text, ())
        if kind == "field":
            return FieldNode(token.pos, (token.text[1:],))
        if kind == "bool":
            return ConstNode(token.pos, token.text == "true", token.text)
        if kind in ("number", "char"):
            try:
                return ConstNode(token.pos, _number(token.text, kind), token.text)
            except ValueError:
                self.error(f"illegal number syntax: {token.text!r}", token.pos)
        if kind == "(":
            return self.pipeline("parenthesized pipeline", ")")
        if kind in ("string", "rawstring"):
            try:
                return ConstNode(token.pos, _unquote(token.text), token.text)
            except ValueError:
                self.error(f"invalid string literal {token.text}", token.pos)
        self.i -= 1
        return None


def parse(source: str, funcs: Container[str]) -> tuple[Node, ...]:
    """The tree of a template whose actions may call the named functions; raises TemplateError."""
    return _Parser(source, funcs).parse()
