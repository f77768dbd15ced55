"""Go's text/template as our renderer speaks it: each construct Ollama's templates use, and clear errors.

Every expected string here was worked out from Go's rules and checked against Go's own text/template
(go1.19, run by hand outside the test suite).
"""

from __future__ import annotations

from typing import Any

import pytest

from ollama_py.engine.goprompt import OLLAMA_FUNCS
from ollama_py.engine.gotemplate import Template, TemplateError

DATA: dict[str, Any] = {
    "Name": "Ada", "Empty": "", "Count": 3, "Zero": 0, "Ratio": 2.5, "List": [1, 2, 3], "None": [],
    "Map": {"b": 2, "a": 1}, "Nested": {"Inner": {"Deep": "down"}}, "Nil": None, "Text": "héllo <b>",
}


def render(source: str, data: Any = DATA) -> str:
    return Template(source, OLLAMA_FUNCS).execute(data)


@pytest.mark.parametrize(("source", "expected"), [
    # fields, nested fields, and Go's "<no value>" for what a map does not hold
    ("Hi {{ .Name }}, {{ .Nested.Inner.Deep }}!", "Hi Ada, down!"),
    ("[{{ .Missing }}] [{{ .Nil }}] [{{ .Map.zz }}]", "[<no value>] [<no value>] [<no value>]"),
    # trim markers eat all whitespace on their side; comments vanish, trimmed or not
    ("a  {{- .Name -}}  b", "aAdab"),
    ("a\n{{- /* comment */ -}}\nb{{/* kept */}} c", "ab c"),
    ("{{- \"x\" }} \n {{- \"y\" -}} \n z", "xyz"),
    # if / else if / else with Go's truth: "", 0, empty slices are false; a map with keys is true
    ("{{ if .Empty }}x{{ else if .Zero }}y{{ else if .List }}z{{ else }}w{{ end }}", "z"),
    ("{{ if .None }}x{{ else }}empty list is false{{ end }}, {{ if .Nested }}a map is true{{ end }}",
     "empty list is false, a map is true"),
    # range: index and element, else for empty and nil, maps in key order, break and continue
    ("{{ range $i, $x := .List }}{{ if $i }}, {{ end }}{{ $i }}={{ $x }}{{ end }}", "0=1, 1=2, 2=3"),
    ("{{ range .None }}never{{ else }}nothing{{ end }}|{{ range .Nil }}never{{ else }}nil{{ end }}", "nothing|nil"),
    ("{{ range $k, $v := .Map }}{{ $k }}:{{ $v }} {{ end }}", "a:1 b:2 "),
    ("{{ range .List }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 3 }}{{ break }}{{ end }}{{ . }}{{ end }}",
     "1"),
    # with moves dot; its else keeps it
    ("{{ with .Nested.Inner }}{{ .Deep }}{{ end }}{{ with .Empty }}x{{ else }}-{{ end }}", "down-"),
    # variables: declared, seen in inner scopes, assigned from a loop; $ is the data
    ("{{ $n := .Name }}{{ range .List }}{{ $n }}{{ end }} {{ $x := 1 }}{{ range .List }}{{ $x = . }}{{ end }}{{ $x }}",
     "AdaAdaAda 3"),
    ("{{ range .List }}{{ $.Name }}{{ end }}", "AdaAdaAda"),
    # comparisons, and/or returning the deciding value (and not evaluating the rest), not
    ("{{ eq .Name \"Bob\" \"Ada\" }} {{ ne .Count 3 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt \"b\" \"a\" }} {{ ge 1.5 2.5 }}",
     "true false true true true false"),
    ("{{ and 1 0 2 }}|{{ and 1 2 }}|{{ or 0 \"\" }}|{{ or 0 \"x\" }}|{{ not .None }}|{{ or 1 .Nil.x }}",
     "0|2||x|true|1"),
    # len counts bytes, index and slice on slices, maps and strings
    (("{{ len .Text }} {{ len .List }} {{ len .Map }} {{ index .List 1 }} {{ index .Map \"a\" }} {{ slice .List 1 }} "
      "{{ slice .Name 1 2 }} {{ len (slice .List 1 3) }}"), "10 3 2 2 1 [2 3] d 2"),
    # print adds spaces only between non-strings; printf's verbs and its complaint about a wrong one; html
    (("{{ print \"a\" 1 2 \"b\" true }}|{{ println 1 \"x\" }}|"
      "{{ printf \"%s has %d items, %.1f %q %v %05d\" .Name 3 .Ratio \"q\" .List 42 }}"),
     "a1 2btrue|1 x\n|Ada has 3 items, 2.5 \"q\" [1 2 3] 00042"),
    ("{{ printf \"%d\" \"x\" }} {{ html .Text }}", "%!d(string=x) héllo &lt;b&gt;"),
    # pipelines pass the value as the last argument; parentheses group; fields chain off a group
    ("{{ .Name | printf \"<%s>\" }} {{ .List | len }} {{ (index .List 0) }} {{ (.Nested.Inner).Deep }}",
     "<Ada> 3 1 down"),
    # literals: characters are numbers, Go's number forms, floats printed as Go prints them, raw and escaped strings
    ("{{ 'a' }} {{ 0x1F }} {{ 1_000 }} {{ 1e3 }} {{ 1000000.0 }} {{ 0.5 }} {{ `raw\\n` }} {{ \"tab\\tA\\u00e9\" }}",
     "97 31 1000 1000 1e+06 0.5 raw\\n tab\tAé"),
    # Ollama's json: Go's encoder (sorted keys, <>& escaped, Go's float forms)
    ("{{ json .Map }} {{ json .Text }} {{ json .List }} {{ json .Nil }} {{ json 1e21 }} {{ json 0.0000001 }}",
     '{"a":1,"b":2} "héllo \\u003cb\\u003e" [1,2,3] null 1e+21 1e-7'),
])
def test_constructs_render_as_go_renders_them(source: str, expected: str) -> None:
    assert render(source) == expected


@pytest.mark.parametrize(("source", "message", "line", "column"), [
    ("line one\n{{ if .Name }}never closed", "{{if}} has no matching {{end}}", 2, 4),
    ("{{ end }}", "unexpected {{end}}", 1, 4),
    ("{{ else }}", "unexpected {{else}}", 1, 4),
    ("{{ if }}{{ end }}", "missing value for if", 1, 7),
    ("ok\n\n  {{ .Name | nosuch }}", 'function "nosuch" not defined', 3, 14),
    ("{{ $undeclared }}", 'undefined variable "$undeclared"', 1, 4),
    ("{{ range .List }}{{ end }}{{ break }}", "{{break}} outside {{range}}", 1, 30),
    ("{{ \"unterminated }}", "unterminated quoted string", 1, 4),
    ("{{ .Name", "unclosed action", 1, 1),
    ("{{ 3x }}", "bad number syntax", 1, 4),
    ("{{ .Name | \"x\" }}", "non executable command in pipeline stage 2", 1, 12),
    ("{{ $a, $b := .List }}", "too many declarations in command", 1, 6),
    ("{{/* never closed", "unclosed comment", 1, 1),
    ("{{ define \"x\" }}{{ end }}", "{{define}} is not supported", 1, 4),
])
def test_bad_templates_are_refused_naming_the_place(source: str, message: str, line: int, column: int) -> None:
    with pytest.raises(TemplateError) as caught:
        Template(source, OLLAMA_FUNCS)
    assert message in str(caught.value)
    assert f"line {line}, column {column}:" in str(caught.value)


@pytest.mark.parametrize(("source", "message", "column"), [
    ("{{ .Name.First }}", "can't evaluate field First in type string", 4),
    ("{{ .Nil.Field }}", "nil pointer evaluating interface {}.Field", 4),
    ("{{ index .List 5 }}", "error calling index: index out of range: 5", 4),
    ("{{ eq .Count \"3\" }}", "error calling eq: incompatible types for comparison", 4),
    ("{{ lt 1 1.5 }}", "error calling lt: incompatible types for comparison", 4),
    ("{{ len .Count }}", "error calling len: len of type int", 4),
    ("{{ range .Count }}{{ . }}{{ end }}x{{ range .Name }}{{ end }}", "range can't iterate over Ada", 39),
    ("{{ nil }}", "nil is not a command", 4),
    ("{{ not 1 2 }}", "wrong number of args for not: want 1 got 2", 4),
])
def test_failing_actions_are_reported_where_they_are(source: str, message: str, column: int) -> None:
    with pytest.raises(TemplateError) as caught:
        render(source)
    assert message in str(caught.value)
    assert f"line 1, column {column}:" in str(caught.value)


def test_a_parsed_template_renders_many_times_alike() -> None:
    template = Template("{{ $x := .Count }}{{ range .List }}{{ $x = . }}{{ end }}{{ $x }}", OLLAMA_FUNCS)
    assert [template.execute({**DATA, "List": [n]}) for n in (7, 8)] == ["7", "8"]
    assert template.execute(DATA) == "3"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(TemplateError, match="nests too deeply"):
        Template("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
