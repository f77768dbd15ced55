"""Split GGUF files (`name-00001-of-00003.gguf`) merged into one file, as Ollama stores them.

llama.cpp finds the other parts of a split model by their file names, next to
the first part. Blobs are named by digest, so the parts cannot load from the
store as they are; like Ollama, we merge them into one GGUF: the first
part's metadata without the `split.*` entries (copied byte for byte), every
part's tensor descriptions with offsets into one data section, and the tensor
bytes copied unchanged. Every part is checked first (numbering, count, tensor
total, no tensor twice), so a broken set fails before anything is written.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import BinaryIO

from ollama_py.store import gguf

SPLIT_NAME = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
SPLIT_KEYS = frozenset({"split.no", "split.count", "split.tensors.count"})
_TYPE_IDS = {name: type_id for type_id, (name, _, _) in gguf.GGML_TYPES.items()}
_COPY = 16 << 20


def split_name(filename: str) -> tuple[str, int, int] | None:
    """(prefix, part number from 1, part count) for llama.cpp's split file names, else None."""
    m = SPLIT_NAME.match(filename)
    if m is None or not 1 <= int(m[2]) <= int(m[3]):
        return None
    return m[1], int(m[2]), int(m[3])


def _number(info: gguf.GGUFFile, key: str) -> int | None:
    value = info.metadata.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def merge(parts: list[Path], out: BinaryIO) -> None:
    """Writes the GGUF that `parts` (in order) were split from; GGUFError when they do not form one."""
    infos = [gguf.read(path, keep_array=0) for path in parts]
    for number, (path, info) in enumerate(zip(parts, infos, strict=True)):
        if (_number(info, "split.no"), _number(info, "split.count")) != (number, len(parts)):
            raise gguf.GGUFError(f"{path.name} is not part {number + 1} of {len(parts)} (split.no "
                                 f"{info.metadata.get('split.no')}, split.count {info.metadata.get('split.count')})")
    tensors = [(path, tensor) for path, info in zip(parts, infos, strict=True) for tensor in info.tensors]
    expected = _number(infos[0], "split.tensors.count")
    if expected is not None and expected != len(tensors):
        raise gguf.GGUFError(f"the parts hold {len(tensors)} tensors, split.tensors.count says {expected}")
    if len({tensor.name for _, tensor in tensors}) != len(tensors):
        raise gguf.GGUFError("a tensor appears in more than one part")

    first, first_path = infos[0], parts[0]
    alignment = first.alignment
    keys = [key for key in first.spans if key not in SPLIT_KEYS]
    out.write(struct.pack("<4sIQQ", gguf.GGUF_MAGIC, 3, len(tensors), len(keys)))
    with first_path.open("rb") as f:
        for key in keys:
            start, end = first.spans[key]
            f.seek(start)
            out.write(f.read(end - start))

    offsets, pos = [], 0
    for _, tensor in tensors:
        offsets.append(pos)
        pos = -(-(pos + tensor.nbytes) // alignment) * alignment
    for (_, tensor), offset in zip(tensors, offsets, strict=True):
        name = tensor.name.encode()
        out.write(struct.pack("<Q", len(name)) + name + struct.pack("<I", len(tensor.shape)))
        out.write(struct.pack(f"<{len(tensor.shape)}QIQ", *tensor.shape, _TYPE_IDS[tensor.type], offset))

    _pad(out, alignment)
    base = out.tell()
    for (path, tensor), offset in zip(tensors, offsets, strict=True):
        out.write(bytes(base + offset - out.tell()))
        with path.open("rb") as f:
            f.seek(tensor.offset)
            _copy(f, out, tensor.nbytes)
    _pad(out, alignment)


def _pad(out: BinaryIO, alignment: int) -> None:
    out.write(bytes(-out.tell() % alignment))


def _copy(src: BinaryIO, out: BinaryIO, n: int) -> None:
    while n:
        block = src.read(min(_COPY, n))
        if not block:
            raise gguf.GGUFError("a part ended before its tensor data")
        out.write(block)
        n -= len(block)

