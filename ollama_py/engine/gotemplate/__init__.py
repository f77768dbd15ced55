"""Go's text/template in Python: the language Ollama writes prompt templates in.

Every model in an Ollama store, and every Modelfile TEMPLATE, carries its
prompt format as a Go template. Rendering those the way Go does (its
whitespace trimming, its truth rules, its `<no value>`, its JSON) is what
makes such a model see the same prompt here as under Ollama, so this package
follows Go's lexer, parser and executor closely rather than translating the
template into another language. What Ollama's templates use is here: text,
actions, `{{- -}}` trimming, comments, `if`/`else if`/`else`, `range` (with
`$i, $x :=`, `else`, `break`, `continue`), `with`/`else with`, variables
(`$`, `:=`, `=`), pipelines, parenthesised pipelines and chained fields, and
the builtins `and or not len index slice eq ne lt le gt ge print printf
println html`. Extra functions (Ollama's `json`, ...) are passed in. `define`,
`template` and `block` are refused with a clear error. An execution is
bounded (`Limits`: steps, output, a deadline, a cancel flag), since a template
can loop or write without end.

Values are Python data standing for Go values: str, bool, int, float, None (a
nil interface), list/tuple (slices), dict (maps, ranged and marshalled in key
order), `Struct` (Go structs with their JSON tags), `Stringer` values (Go
types whose String method the template printer calls) and `Nil` ones (nil
slices and maps, which JSON writes as null).
"""

from ollama_py.engine.gotemplate.exec import LimitExceeded, Limits, Template
from ollama_py.engine.gotemplate.funcs import Function, FunctionError
from ollama_py.engine.gotemplate.parse import (ActionNode, BreakNode, ChainNode, CommandNode, ConstNode, ContinueNode,
                                               DotNode, FieldNode, IdentifierNode, IfNode, NilNode, Node, PipeNode,
                                               RangeNode, TemplateError, TextNode, VariableNode, WithNode)
from ollama_py.engine.gotemplate.values import (JSONList, JSONMap, Nil, NilSlice, OrderedMap, PropertyType, Stringer,
                                                Struct, StructType, format_value, go_json, truth, type_name)

__all__ = [
    "ActionNode", "BreakNode", "ChainNode", "CommandNode", "ConstNode", "ContinueNode", "DotNode",
    "FieldNode", "Function", "FunctionError", "IdentifierNode", "IfNode", "JSONList", "JSONMap", "LimitExceeded",
    "Limits", "Nil", "NilNode",
    "NilSlice", "Node", "OrderedMap", "PipeNode", "PropertyType", "RangeNode", "Stringer", "Struct", "StructType",
    "Template", "TemplateError", "TextNode", "VariableNode", "WithNode", "format_value", "go_json", "truth",
    "type_name",
]
