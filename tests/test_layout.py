"""The ctypes structs match the pinned headers, as the C compiler lays them out."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from ollama_py.llama import capi
from ollama_py.llama.lib import LIB_DIR
from tests.layout import compiled_layouts, header_fields, problems

INCLUDE = LIB_DIR / "include"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    return compiled_layouts(capi.STRUCTS, INCLUDE, tmp_path_factory.mktemp("layout"))


@pytest.mark.parametrize("c_name", sorted(capi.STRUCTS))
def test_struct_matches_header(c_name: str, compiled: dict[str, dict[str, int]]) -> None:
    cls, header = capi.STRUCTS[c_name]
    assert problems(cls, c_name, INCLUDE / header, compiled[c_name]) == []


def test_every_declared_structure_is_checked() -> None:
    declared = {obj for obj in vars(capi).values()
                if isinstance(obj, type) and issubclass(obj, ctypes.Structure)}
    assert declared == {cls for cls, _ in capi.STRUCTS.values()}


def _variant(fields: list[tuple[str, object]]) -> type[ctypes.Structure]:
    return type("Variant", (ctypes.Structure,), {"_fields_": fields})


@pytest.mark.parametrize("change", ["reordered", "removed", "added", "retyped"])
def test_checker_catches_drift(change: str, compiled: dict[str, dict[str, int]]) -> None:
    fields = list(capi.llama_model_params._fields_)
    if change == "reordered":
        fields[2], fields[3] = fields[3], fields[2]
    elif change == "removed":
        del fields[-1]
    elif change == "added":
        fields.append(("extra_flag", ctypes.c_bool))
    else:
        fields[2] = ("n_gpu_layers", ctypes.c_int64)
    header = INCLUDE / "llama.h"
    assert problems(_variant(fields), "llama_model_params", header, compiled["llama_model_params"])


def test_header_parser_reads_function_pointers_and_unions() -> None:
    assert "progress_callback" in header_fields(INCLUDE / "llama.h", "llama_model_params")
    assert header_fields(INCLUDE / "llama.h", "llama_model_kv_override") == ["tag", "key", "<anonymous union>"]
    assert Path(INCLUDE / "ggml-backend.h").exists()
