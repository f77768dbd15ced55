"""Running a parsed template over data, as Go's text/template executes: variables, ranges, pipelines, calls."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ollama_py.engine.gotemplate.funcs import BUILTINS, LAZY, Function, FunctionError
from ollama_py.engine.gotemplate.parse import (ActionNode, BreakNode, ChainNode, CommandNode, ConstNode, ContinueNode,
                                               DotNode, FieldNode, IdentifierNode, IfNode, NilNode, Node, PipeNode,
                                               RangeNode, TemplateError, TextNode, VariableNode, WithNode, parse)
from ollama_py.engine.gotemplate.values import OrderedMap, Struct, format_value, truth, type_name


class _Missing:
    """No value at all (Go's missingVal): the final argument of the first command in a pipeline."""


_MISSING = _Missing()


@dataclass(frozen=True)
class Limits:
    """How much work one execution may do. A template can loop (nested ranges over numbers) or write without
    end, and a request may bring its own: every execution is bounded, and whoever asked can stop it."""

    max_steps: int = 0  # actions, blocks and loop turns; 0: unbounded
    max_output: int = 0  # characters written, and the longest string one function may make; 0: unbounded
    deadline: float = 0.0  # time.monotonic() by which it must have ended; 0: none
    cancelled: threading.Event | None = None  # set when nobody waits for the output any more


class LimitExceeded(TemplateError):
    """An execution stopped at one of its Limits; `limit` says which: "steps", "output", "time" or "cancelled"."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


_CHECK_EVERY = 256  # steps between looks at the clock and the cancel flag


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _State:
    """One execution: the output so far and the variable stack (`$` at the bottom)."""

    def __init__(self, template: Template, data: Any, limits: Limits) -> None:
        self.template = template
        self.out: list[str] = []
        self.vars: list[list[Any]] = [["$", data]]
        self.limits = limits
        self.steps = 0
        self.size = 0

    def step(self) -> None:
        self.steps += 1
        limits = self.limits
        if limits.max_steps and self.steps > limits.max_steps:
            raise LimitExceeded("steps", f"template execution took more than {limits.max_steps} steps")
        if self.steps % _CHECK_EVERY == 0:
            if limits.cancelled is not None and limits.cancelled.is_set():
                raise LimitExceeded("cancelled", "template execution cancelled")
            if limits.deadline and time.monotonic() > limits.deadline:
                raise LimitExceeded("time", "template execution ran out of time")

    def write(self, text: str) -> None:
        self.size += len(text)
        if self.limits.max_output and self.size > self.limits.max_output:
            raise LimitExceeded("output", f"template output is longer than {self.limits.max_output} characters")
        self.out.append(text)

    def error(self, message: str, node: Any) -> NoReturn:
        raise TemplateError(f"executing <{self.template.text_of(node)}>: {message}", self.template.source, node.pos)

    def walk(self, dot: Any, nodes: Sequence[Node]) -> None:
        for node in nodes:
            self.step()
            if isinstance(node, TextNode):
                self.write(node.text)
            elif isinstance(node, ActionNode):
                value = self.eval_pipeline(dot, node.pipe)
                if not node.pipe.decl:
                    self.write("<no value>" if value is None else format_value(value))
            elif isinstance(node, (IfNode, WithNode)):
                mark = len(self.vars)
                value = self.eval_pipeline(dot, node.pipe)
                if truth(value):
                    self.walk(value if isinstance(node, WithNode) else dot, node.body)
                elif node.else_body is not None:
                    self.walk(dot, node.else_body)
                del self.vars[mark:]
            elif isinstance(node, RangeNode):
                self.walk_range(dot, node)
            elif isinstance(node, BreakNode):
                raise _Break
            elif isinstance(node, ContinueNode):
                raise _Continue

    def walk_range(self, dot: Any, node: RangeNode) -> None:
        mark = len(self.vars)
        value = self.eval_pipeline(dot, node.pipe)
        pipe = node.pipe
        iterated = False
        for key, elem in self.range_items(value, node):
            iterated = True
            self.step()
            if pipe.decl:
                if pipe.is_assign:
                    self.set_var(pipe.decl[0], key if len(pipe.decl) > 1 else elem, node)
                    if len(pipe.decl) > 1:
                        self.set_var(pipe.decl[1], elem, node)
                else:
                    self.vars[-1][1] = elem
                    if len(pipe.decl) > 1:
                        self.vars[-2][1] = key
            inner = len(self.vars)
            try:
                self.walk(elem, node.body)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[inner:]
        if not iterated and node.else_body is not None:
            self.walk(dot, node.else_body)
        del self.vars[mark:]

    def range_items(self, value: Any, node: RangeNode) -> Iterator[tuple[Any, Any]]:
        if value is None:
            return iter(())
        if isinstance(value, dict):
            keys = list(value) if isinstance(value, OrderedMap) else sorted(value)
            return ((k, value[k]) for k in keys)
        if isinstance(value, (list, tuple)):
            return enumerate(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if len(node.pipe.decl) > 1:
                self.error(f"can't use {value} to iterate over more than one variable", node)
            return ((i, i) for i in range(value))
        self.error(f"range can't iterate over {format_value(value)}", node)

    def set_var(self, name: str, value: Any, node: Any) -> None:
        for slot in reversed(self.vars):
            if slot[0] == name:
                slot[1] = value
                return
        self.error(f"undefined variable: {name}", node)

    def variable(self, name: str, node: Any) -> Any:
        for slot in reversed(self.vars):
            if slot[0] == name:
                return slot[1]
        self.error(f"undefined variable: {name}", node)

    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value, pipe)
            else:
                self.vars.append([name, value])
        return value

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            return self.eval_fields(dot, first, first.names, cmd.args, final)
        if isinstance(first, ChainNode):
            return self.eval_fields(self.eval_arg(dot, first.node), first, first.fields, cmd.args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first, cmd.args, final)
        if isinstance(first, VariableNode):
            return self.eval_variable(first, cmd.args, final)
        if len(cmd.args) > 1 or final is not _MISSING:
            self.error(f"can't give argument to non-function {self.template.text_of(first)}", first)
        if isinstance(first, PipeNode):
            return self.eval_pipeline(dot, first)
        if isinstance(first, NilNode):
            self.error("nil is not a command", first)
        if isinstance(first, DotNode):
            return dot
        assert isinstance(first, ConstNode)
        return first.value

    def eval_variable(self, node: VariableNode, args: Sequence[Node], final: Any) -> Any:
        value = self.variable(node.name, node)
        if not node.fields:
            if len(args) > 1 or final is not _MISSING:
                self.error(f"can't give argument to non-function {node.name}", node)
            return value
        return self.eval_fields(value, node, node.fields, args, final)

    def eval_fields(self, receiver: Any, node: Any, names: Sequence[str], args: Sequence[Node], final: Any) -> Any:
        for i, name in enumerate(names):
            last = i == len(names) - 1
            has_args = last and (len(args) > 1 or final is not _MISSING)
            receiver = self.field(receiver, name, has_args, node)
        return receiver

    def field(self, receiver: Any, name: str, has_args: bool, node: Any) -> Any:
        if receiver is None:
            self.error(f"nil pointer evaluating interface {{}}.{name}", node)
        if isinstance(receiver, Struct):
            if name not in receiver.type.field_names:
                self.error(f"can't evaluate field {name} in type {receiver.type.name}", node)
            if has_args:
                self.error(f"{name} has arguments but cannot be invoked as function", node)
            return receiver.values.get(name)
        if isinstance(receiver, dict):
            if has_args:
                self.error(f"{name} is not a method but has arguments", node)
            return receiver.get(name)
        self.error(f"can't evaluate field {name} in type {type_name(receiver)}", node)

    def eval_arg(self, dot: Any, node: Node) -> Any:
        if isinstance(node, DotNode):
            return dot
        if isinstance(node, NilNode):
            return None
        if isinstance(node, ConstNode):
            return node.value
        if isinstance(node, FieldNode):
            return self.eval_fields(dot, node, node.names, (node,), _MISSING)
        if isinstance(node, VariableNode):
            return self.eval_variable(node, (node,), _MISSING)
        if isinstance(node, PipeNode):
            return self.eval_pipeline(dot, node)
        if isinstance(node, IdentifierNode):
            return self.eval_function(dot, node, (node,), _MISSING)
        assert isinstance(node, ChainNode), node  # the parser makes no other operands
        return self.eval_fields(self.eval_arg(dot, node.node), node, node.fields, (node,), _MISSING)

    def eval_function(self, dot: Any, ident: IdentifierNode, args: Sequence[Node], final: Any) -> Any:
        name = ident.name
        if name in LAZY:
            if len(args) < 2 and final is _MISSING:
                self.error(f"wrong number of args for {name}: want at least 1 got 0", ident)
            value: Any = None
            for arg in args[1:]:
                value = self.eval_arg(dot, arg)
                if truth(value) == (name == "or"):
                    return value
            return value if final is _MISSING else final
        values = [self.eval_arg(dot, arg) for arg in args[1:]]
        if final is not _MISSING:
            values.append(final)
        function = self.template.funcs[name]
        if len(values) < function.min_args or (function.max_args is not None and len(values) > function.max_args):
            want = str(function.min_args) if function.min_args == function.max_args else f"at least {function.min_args}"
            self.error(f"wrong number of args for {name}: want {want} got {len(values)}", ident)
        try:
            result = function.fn(*values)
        except FunctionError as exc:
            self.error(f"error calling {name}: {exc}", ident)
        if isinstance(result, str) and self.limits.max_output and len(result) > self.limits.max_output:
            raise LimitExceeded("output", f"{name} made a string longer than {self.limits.max_output} characters")
        return result


class Template:
    """A parsed Go template; immutable, so one parse serves every request and thread."""

    def __init__(self, source: str, funcs: Mapping[str, Function] | None = None, *,
                 nodes: tuple[Node, ...] | None = None) -> None:
        self.source = source
        self.extra_funcs = dict(funcs or {})
        self.funcs: dict[str, Function] = {**BUILTINS, **self.extra_funcs}
        if nodes is None:
            try:
                nodes = parse(source, self.funcs.keys() | LAZY)
            except RecursionError:
                raise TemplateError("template nests too deeply") from None
        self.nodes = nodes

    def with_nodes(self, nodes: tuple[Node, ...]) -> Template:
        """The same template source and functions over a rewritten tree (Ollama appends and cuts nodes)."""
        return Template(self.source, self.extra_funcs, nodes=nodes)

    def execute(self, data: Any, limits: Limits = Limits()) -> str:
        """The template's output for `data` (dot and `$`); raises TemplateError naming the failing action,
        LimitExceeded when it stops at one of `limits`."""
        state = _State(self, data, limits)
        try:
            state.walk(data, self.nodes)
        except RecursionError:
            raise TemplateError("template nests too deeply") from None
        return "".join(state.out)

    def text_of(self, node: Any) -> str:
        """The source text a node came from, for error messages (best effort: the rest of its line)."""
        end = self.source.find("}}", node.pos)
        return self.source[node.pos:end if end >= 0 else None].strip()
