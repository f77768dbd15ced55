"""Compares ctypes Structures with the C compiler's view of the pinned headers.

Two independent checks: the field names in header order (parsed from the
header text), and sizeof/offsetof as compiled by the C compiler.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

UNION = "<anonymous union>"


def header_fields(header: Path, struct: str) -> list[str]:
    """Member names of `struct NAME { ... }` in declaration order."""
    text = header.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    match = re.search(rf"\bstruct\s+{re.escape(struct)}\s*\{{", text)
    if not match:
        raise LookupError(f"struct {struct} not found in {header}")
    depth, i = 1, match.end()
    start = i
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    body = "\n".join(line for line in text[start:i - 1].splitlines() if not line.strip().startswith("#"))
    names: list[str] = []
    depth, statement = 0, ""
    for ch in body:
        statement += ch
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == ";" and depth == 0:
            names.append(_member_name(statement))
            statement = ""
    return names


def _member_name(statement: str) -> str:
    if "{" in statement:
        return UNION
    fn_ptr = re.search(r"\(\s*\*\s*(\w+)\s*\)", statement)
    if fn_ptr:
        return fn_ptr.group(1)
    name = re.search(r"(\w+)\s*(\[[^\]]*\]\s*)*;\s*$", statement)
    if not name:
        raise ValueError(f"cannot read a member name from {statement.strip()!r}")
    return name.group(1)


def ctypes_fields(cls: type[ctypes.Structure]) -> list[str]:
    anonymous = set(getattr(cls, "_anonymous_", ()))
    return [UNION if name in anonymous else name for name, *_ in cls._fields_]


def _offset_expr(cls: type[ctypes.Structure], c_name: str, field: str) -> str:
    """The C member whose offset equals the ctypes field's offset."""
    if field in getattr(cls, "_anonymous_", ()):
        union_type = dict((n, t) for n, t, *_ in cls._fields_)[field]
        field = union_type._fields_[0][0]
    return f"offsetof(struct {c_name}, {field})"


def compiled_layouts(structs: dict[str, tuple[type[ctypes.Structure], str]], include: Path,
                     workdir: Path) -> dict[str, dict[str, int]]:
    """sizeof and offsetof of every declared field, as the C compiler sees them."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    headers = sorted({header for _, header in structs.values()})
    lines = ["#include <stddef.h>", "#include <stdio.h>", *[f'#include "{h}"' for h in headers],
             "int main(void) {"]
    for c_name, (cls, _) in structs.items():
        lines.append(f'printf("{c_name} sizeof %zu\\n", sizeof(struct {c_name}));')
        for field, *_ in cls._fields_:
            lines.append(f'printf("{c_name} {field} %zu\\n", {_offset_expr(cls, c_name, field)});')
    lines += ["return 0;", "}"]
    source = workdir / "layout.c"
    source.write_text("\n".join(lines))
    exe = workdir / "layout"
    subprocess.run([cc, "-std=c11", f"-I{include}", str(source), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    out: dict[str, dict[str, int]] = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        struct, field, value = line.split()
        out.setdefault(struct, {})[field] = int(value)
    return out


def problems(cls: type[ctypes.Structure], c_name: str, header: Path, compiled: dict[str, int]) -> list[str]:
    """Every way the ctypes declaration differs from C; empty when they agree."""
    found: list[str] = []
    declared, expected = ctypes_fields(cls), header_fields(header, c_name)
    if declared != expected:
        found.append(f"{c_name}: fields {declared} but the header has {expected}")
    if ctypes.sizeof(cls) != compiled["sizeof"]:
        found.append(f"{c_name}: ctypes sizeof {ctypes.sizeof(cls)} != C {compiled['sizeof']}")
    for field, *_ in cls._fields_:
        ours = getattr(cls, field).offset
        if field in compiled and ours != compiled[field]:
            found.append(f"{c_name}.{field}: ctypes offset {ours} != C {compiled[field]}")
    return found
