"""Model files the tests build from what the package index ships, cached across sessions, never committed.

No F16 model or LoRA adapter ships on the index, so they are made here with
the `gguf` package's own reader, dequantizers and writer from the default
model's Q4_1 GGUF. Each file is written to a temporary name and renamed, so a
session killed halfway never leaves a broken file for the next one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from ollama_py.store import default_model

# Bump when a generator changes: the cached files are then made again.
VERSION = 1


def _cached(cache: Path, name: str, make: Callable[[Path], None]) -> Path:
    folder = cache / "test-fixtures" / f"v{VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        partial = folder / f".{name}.{os.getpid()}.partial"
        make(partial)
        os.replace(partial, path)
    return path


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, changes: dict[str, object]) -> None:
    """Every key/value of `reader` but the header's own and the architecture (the writer adds it)."""
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = changes.get(key, field.contents())
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)


def dequantized(source: Path, out: Path, dtype: type = np.float16) -> None:
    """`source` with every matrix dequantized to `dtype` (vectors stay F32), as a fresh GGUF."""
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(out, arch)
    file_type = {np.float16: 1, np.float32: 0}[dtype]
    _copy_metadata(reader, writer, {"general.file_type": file_type})
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if values.ndim > 1:
            values = values.astype(dtype)
        writer.add_tensor(tensor.name, np.ascontiguousarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def f16_model(cache: Path) -> Path:
    """The default model (SmolLM2-135M) with F16 weights, about 270 MB."""
    return _cached(cache, "smollm2-135m-f16.gguf", lambda out: dequantized(default_model.ensure(cache), out))


def _write_lora(out: Path, arch: str, pairs: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float) -> None:
    writer = gguf.GGUFWriter(out, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, (a, b) in pairs.items():
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def random_lora(out: Path, *, n_layer: int = 30, n_embd: int = 576, rank: int = 8, std: float = 0.1,
                arch: str = "llama") -> None:
    """A LoRA on every attn_q of SmolLM2-135M with small random weights (seeded: the same file each time).

    numpy shapes are ggml's reversed: lora_a (rank, n_in), lora_b (n_out, rank).
    """
    rng = np.random.default_rng(16)
    pairs = {f"blk.{i}.attn_q.weight": (rng.normal(0, std, (rank, n_embd)).astype(np.float32),
                                        rng.normal(0, std, (n_embd, rank)).astype(np.float32))
             for i in range(n_layer)}
    _write_lora(out, arch, pairs, alpha=float(rank))


def lora_adapter(cache: Path) -> Path:
    return _cached(cache, "smollm2-135m-lora-q.gguf", random_lora)


def mismatched_lora_adapters(cache: Path) -> dict[str, Path]:
    """Adapters llama.cpp would refuse for SmolLM2-135M: another width, and another architecture."""
    return {"shape": _cached(cache, "lora-wrong-width.gguf", lambda out: random_lora(out, n_layer=2, n_embd=512)),
            "architecture": _cached(cache, "lora-qwen2.gguf", lambda out: random_lora(out, n_layer=2, arch="qwen2"))}
