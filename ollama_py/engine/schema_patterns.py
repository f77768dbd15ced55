"""The regular expressions in a JSON schema's `pattern`s, checked before llama.cpp turns them into a grammar.

llama.cpp's converter refuses some broken patterns itself (unbalanced parentheses, a quantifier with
nothing to repeat, a trailing backslash) but copies others into the grammar as they are: a repetition
such as `a{3,1}` then makes its grammar parser allocate until the process dies, and a range such as
`[z-a]` gives a grammar no answer can satisfy. Python's `re` knows these mistakes. Where its dialect
and ECMA-262's (the one JSON Schema patterns are written in) part ways, the pattern is left to llama.cpp.
"""

from __future__ import annotations

import re
from typing import Any

# re's complaints about what ECMA-262 allows: `\p{L}` and identity escapes, `(?<name>...)` groups,
# the empty classes `[]` and `[^]`, look-behinds of varying width.
_ECMA_ALLOWS = ("bad escape", "unknown extension", "unterminated character set", "look-behind requires")
# Keywords whose values are data, not schemas: a `pattern` key inside them is a property of an example.
_DATA = frozenset({"const", "enum", "default", "examples"})


def check(schema: Any, where: str) -> None:
    """Raises ValueError naming the `pattern` (by its path from `where`) that is not a regular expression."""
    stack: list[tuple[Any, str]] = [(schema, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                _check_one(pattern, f"{path}.pattern")
            stack.extend((value, f"{path}.{key}") for key, value in reversed(node.items())
                         if key not in _DATA and isinstance(value, dict | list))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{i}]") for i, value in reversed(list(enumerate(node)))
                         if isinstance(value, dict | list))


def _check_one(pattern: str, path: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        if not str(exc).startswith(_ECMA_ALLOWS):
            raise ValueError(f"{path}: {pattern[:200]!r} is not a valid regular expression ({exc})") from None
    except RecursionError:
        pass  # nested deeper than re's parser goes; llama.cpp's reads it
