"""The package's imports, read from its source: no cycles, and the arrows between rooms point one way.

Every import counts, at module level or inside a function: an import moved into
a function to dodge a cycle at run time still ties the two modules together.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import ollama_py

PACKAGE = ollama_py.__name__
ROOT = Path(ollama_py.__file__).parent
Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The absolute names of every module `name` imports (a `from` import of a submodule names the submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package that holds this module
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def internal(target: str, known: set[str]) -> str | None:
    """The module of the package that an import names (its longest known prefix), or None for another package."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:end])) in known:
            return prefix
    return None


def graph() -> tuple[Graph, Graph]:
    """(module -> package modules it imports, module -> top-level names of the other packages it imports)."""
    found = sources()
    known = set(found)
    inner: Graph = {}
    outer: Graph = {}
    for name, path in found.items():
        targets = imported(name, path, known)
        inner[name] = {m for t in targets if (m := internal(t, known)) is not None and m != name}
        outer[name] = {t.split(".")[0] for t in targets if internal(t, known) is None}
    return inner, outer


def room(module: str) -> str:
    """The folder (or top-level module) a module belongs to: `ollama_py.engine.chat` is in `engine`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(edges: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """One cycle through each strongly connected group of nodes (Tarjan's algorithm), as a path back to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    for group in groups:
        yield _path_back(min(group), group, edges)


def _path_back(start: str, group: set[str], edges: Mapping[str, set[str]]) -> list[str]:
    """A shortest path from `start` back to itself inside its group (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(edges.get(node, set()) & group):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a cycle but no path leads back to it")


def wire_or_below(target: str) -> bool:
    """What api/ may import: itself, the standard library and msgspec (wire types know nothing of the app)."""
    ours = target == f"{PACKAGE}.api" or target.startswith(f"{PACKAGE}.api.")
    return ours or target == "msgspec" or target in sys.stdlib_module_names


def test_the_reader_sees_the_package() -> None:
    inner, outer = graph()
    assert "ollama_py.llama.model" in inner["ollama_py.engine.runner"]
    assert "msgspec" in outer["ollama_py.api.native"]
    assert list(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c", "a"]]


def test_no_module_imports_itself_back() -> None:
    inner, _ = graph()
    found = [" -> ".join(cycle) for cycle in cycles(inner)]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_rooms_import_each_other_one_way() -> None:
    inner, _ = graph()
    rooms: Graph = {}
    for module, targets in inner.items():
        rooms.setdefault(room(module), set()).update(room(t) for t in targets if room(t) != room(module))
    found = [" -> ".join(cycle) for cycle in cycles(rooms)]
    assert not found, "rooms that import each other:\n" + "\n".join(found)


def test_the_engine_imports_neither_the_http_layer_nor_the_cluster() -> None:
    inner, _ = graph()
    wrong = sorted(f"{module} -> {target}" for module, targets in inner.items() if room(module) == "engine"
                   for target in targets if room(target) in ("server", "cluster"))
    assert not wrong, "the engine reaches out of its room:\n" + "\n".join(wrong)


def test_wire_types_import_only_wire_types_the_standard_library_and_msgspec() -> None:
    inner, outer = graph()
    wrong = sorted(f"{module} -> {target}" for module in inner if room(module) == "api"
                   for target in inner[module] | outer[module] if not wire_or_below(target))
    assert not wrong, "api/ imports beyond the wire:\n" + "\n".join(wrong)
