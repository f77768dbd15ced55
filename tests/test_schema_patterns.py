"""JSON-schema `pattern`s: the mistakes llama.cpp would copy into a grammar are refused, naming where they are;
what ECMA-262 allows and Python's `re` does not is left to llama.cpp."""

from __future__ import annotations

import pytest

from ollama_py.engine import schema_patterns
from ollama_py.engine.chat import grammar_for_format


def _schema(pattern: str) -> dict[str, object]:
    return {"type": "object", "properties": {"items": {"type": "array", "items": [
        {"type": "string"}, {"type": "string", "pattern": pattern}]}}}


@pytest.mark.parametrize("pattern", ["^a{3,1}$", "^[z-a]$", "^(ab$", "^*a$"])
def test_a_broken_pattern_is_refused_by_its_path(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"^format\.properties\.items\.items\[1\]\.pattern: .* is not a valid "
                                         r"regular expression"):
        schema_patterns.check(_schema(pattern), "format")


@pytest.mark.parametrize("pattern", [r"^\p{Lu}[a-z]+$", "^(?<word>[a-z]+)$", "^[A-Z]{3}$", "no anchors",
                                     "^" + "(" * 2000 + "a" + ")" * 2000 + "$"])
def test_what_ecma_262_allows_is_left_to_llama_cpp(pattern: str) -> None:
    schema_patterns.check(_schema(pattern), "format")


def test_a_pattern_key_inside_example_data_is_not_a_pattern() -> None:
    schema_patterns.check({"type": "object", "const": {"pattern": "(("}, "examples": [{"pattern": "(("}]}, "format")


def test_format_with_a_repetition_llama_cpp_cannot_parse_is_refused_before_it_reaches_it() -> None:
    # `{3,1}` reaches llama.cpp's grammar parser as it is, which then allocates until the process dies.
    with pytest.raises(ValueError, match=r"format\.properties\.code\.pattern: '\^a\{3,1\}\$'"):
        grammar_for_format({"type": "object", "properties": {"code": {"type": "string", "pattern": "^a{3,1}$"}}})
