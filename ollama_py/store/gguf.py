"""GGUF metadata, read in pure Python without loading the model.

`show`, `list` details and `create` need the architecture, size and chat
template of a file that may be many gigabytes or may come from a stranger, so
this reader maps the file and checks every count, length and offset against
the bytes that are really there before it allocates or reads anything. A
hostile header (a string of 2^63 bytes, an array of a billion items in a
200-byte file, a tensor past the end) is a GGUFError naming what is wrong and
where, never a MemoryError, a hang or a read past the end.
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME less the terminating NUL
MAX_KEY_LEN = 65535  # the GGUF specification's limit on key length

# Array items kept by default; longer arrays (vocabularies, merges) are walked
# for bounds but reported only by length, as Ollama's `show` does.
DEFAULT_KEEP_ARRAY = 256


class GGUFError(ValueError):
    """A file that is not a GGUF file, or whose header is damaged or hostile."""


# GGUF value types: id -> (name, struct format or None for variable size)
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_SCALARS: dict[int, struct.Struct] = {
    _UINT8: struct.Struct("<B"), _INT8: struct.Struct("<b"),
    _UINT16: struct.Struct("<H"), _INT16: struct.Struct("<h"),
    _UINT32: struct.Struct("<I"), _INT32: struct.Struct("<i"),
    _FLOAT32: struct.Struct("<f"), _BOOL: struct.Struct("<?"),
    _UINT64: struct.Struct("<Q"), _INT64: struct.Struct("<q"),
    _FLOAT64: struct.Struct("<d"),
}
_U32 = _SCALARS[_UINT32]
_U64 = _SCALARS[_UINT64]

# ggml tensor types: id -> (name, elements per block, bytes per block), as the
# pinned libggml reports them (a test compares this table with the library).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18), 42: ("Q2_0", 64, 18),
}

# llama_ftype (general.file_type) -> the quantisation name Ollama shows.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}


class ElidedArray(msgspec.Struct, frozen=True):
    """An array too long to keep: its item type and length only."""

    item_type: int
    length: int


def array_length(value: object) -> int:
    """The length of a metadata array, kept or elided; 0 for anything else (upstream's converter writes
    `<arch>.vocab_size` for only some architectures, so the token list's length has to stand in)."""
    if isinstance(value, ElidedArray):
        return value.length
    return len(value) if isinstance(value, (list, tuple)) else 0


class TensorInfo(msgspec.Struct, frozen=True):
    name: str
    shape: tuple[int, ...]
    type: str
    offset: int  # from the start of the file
    nbytes: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


class TokenizerInfo(msgspec.Struct, frozen=True, kw_only=True):
    model: str | None
    pre: str | None
    vocab_size: int | None
    bos_token_id: int | None
    eos_token_id: int | None


class GGUFFile(msgspec.Struct, frozen=True, kw_only=True):
    """What a GGUF file says about itself; the weights are not read."""

    version: int
    file_size: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    # Where each metadata entry (key, type and value) lies in the file: merging split files copies them as they are.
    spans: dict[str, tuple[int, int]] = {}

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    def _arch_int(self, suffix: str) -> int | None:
        value = self.metadata.get(f"{self.architecture}.{suffix}")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def parameter_count(self) -> int:
        return sum(t.elements for t in self.tensors)

    @property
    def file_type(self) -> str:
        """The quantisation, as Ollama names it (`Q4_K_M`); `unknown` if the file does not say."""
        value = self.metadata.get("general.file_type")
        if isinstance(value, int) and not isinstance(value, bool):
            return FILE_TYPES.get(value, f"unknown ({value})")
        return "unknown"

    @property
    def context_length(self) -> int | None:
        return self._arch_int("context_length")

    @property
    def embedding_length(self) -> int | None:
        return self._arch_int("embedding_length")

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def tokenizer(self) -> TokenizerInfo:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        vocab = tokens.length if isinstance(tokens, ElidedArray) else len(tokens) if isinstance(tokens, list) else None

        def text(key: str) -> str | None:
            value = self.metadata.get(key)
            return value if isinstance(value, str) else None

        def number(key: str) -> int | None:
            value = self.metadata.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return TokenizerInfo(
            model=text("tokenizer.ggml.model"), pre=text("tokenizer.ggml.pre"), vocab_size=vocab,
            bos_token_id=number("tokenizer.ggml.bos_token_id"), eos_token_id=number("tokenizer.ggml.eos_token_id"))

    def model_info(self) -> dict[str, Any]:
        """Metadata for `/api/show`'s `model_info`: long arrays become None, as Ollama does."""
        info: dict[str, Any] = {k: (None if isinstance(v, ElidedArray) else v) for k, v in self.metadata.items()}
        info["general.parameter_count"] = self.parameter_count
        return info


def human_number(n: int) -> str:
    """Ollama's parameter-size label: 134515008 -> '134.52M', 8030261248 -> '8.0B'."""
    if n >= 1_000_000_000:
        value = n / 1_000_000_000
        return f"{value:.0f}B" if value == math.floor(value) else f"{value:.1f}B"
    if n >= 1_000_000:
        value = n / 1_000_000
        return f"{value:.0f}M" if value == math.floor(value) else f"{value:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


class _Cursor:
    """Reads little-endian values from a buffer, refusing to go past its end."""

    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.size - self.pos:
            raise GGUFError(f"{what} at offset {self.pos} needs {n} bytes, but the file has "
                            f"{self.size - self.pos} left (truncated or corrupt header)")

    def take(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        value = fmt.unpack_from(self.buf, self.pos)[0]
        self.pos += fmt.size
        return value

    def string(self, what: str, limit: int | None = None) -> str:
        start = self.pos
        length = self.take(_U64, f"length of {what}")
        if limit is not None and length > limit:
            raise GGUFError(f"{what} at offset {start} is {length} bytes long, more than the {limit} allowed")
        self.need(length, what)
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        length = self.take(_U64, f"length of {what}")
        self.need(length, what)
        self.pos += length


def _value(cur: _Cursor, vtype: int, key: str, keep_array: int) -> Any:
    if vtype in _SCALARS:
        return cur.take(_SCALARS[vtype], f"value of {key!r}")
    if vtype == _STRING:
        return cur.string(f"value of {key!r}")
    if vtype != _ARRAY:
        raise GGUFError(f"metadata {key!r} at offset {cur.pos - 4} has unknown value type {vtype}")
    item_type = cur.take(_U32, f"array type of {key!r}")
    count = cur.take(_U64, f"array length of {key!r}")
    if item_type in _SCALARS:
        item = _SCALARS[item_type]
        cur.need(count * item.size, f"{count} items of array {key!r}")
        if count > keep_array:
            cur.pos += count * item.size
            return ElidedArray(item_type, count)
        values = [item.unpack_from(cur.buf, cur.pos + i * item.size)[0] for i in range(count)]
        cur.pos += count * item.size
        return values
    if item_type == _STRING:
        # Each string costs at least its 8-byte length, so the count is bounded before the walk.
        cur.need(count * 8, f"{count} strings of array {key!r}")
        if count > keep_array:
            for i in range(count):
                cur.skip_string(f"item {i} of array {key!r}")
            return ElidedArray(item_type, count)
        return [cur.string(f"item {i} of array {key!r}") for i in range(count)]
    raise GGUFError(f"array {key!r} has unsupported item type {item_type}")


def parse(buf: mmap.mmap | bytes, *, keep_array: int = DEFAULT_KEEP_ARRAY) -> GGUFFile:
    """Parses a GGUF header from a buffer holding the whole file."""
    size = len(buf)
    cur = _Cursor(buf, size)
    cur.need(4, "magic")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise GGUFError(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    cur.pos = 4
    version = cur.take(_U32, "version")
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
            raise GGUFError("big-endian GGUF files are not supported")
        raise GGUFError(f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    tensor_count = cur.take(_U64, "tensor count")
    kv_count = cur.take(_U64, "metadata count")
    # The smallest metadata entry is 13 bytes (empty key, type, one-byte value) and the
    # smallest tensor entry 24: absurd counts fail here, before any loop or allocation.
    cur.need(kv_count * 13 + tensor_count * 24, f"{kv_count} metadata entries and {tensor_count} tensors")

    metadata: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    for _ in range(kv_count):
        start = cur.pos
        key = cur.string("metadata key", MAX_KEY_LEN)
        vtype = cur.take(_U32, f"type of {key!r}")
        if key in metadata:
            raise GGUFError(f"metadata key {key!r} appears twice")
        metadata[key] = _value(cur, vtype, key, keep_array)
        spans[key] = (start, cur.pos)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
            or alignment & (alignment - 1):
        raise GGUFError(f"general.alignment {alignment!r} is not a positive power of two")

    raw_tensors = []
    for _ in range(tensor_count):
        name = cur.string("tensor name", MAX_TENSOR_NAME)
        n_dims = cur.take(_U32, f"dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions, more than {MAX_DIMS}")
        shape = tuple(cur.take(_U64, f"dimension of tensor {name!r}") for _ in range(n_dims))
        ttype = cur.take(_U32, f"type of tensor {name!r}")
        offset = cur.take(_U64, f"offset of tensor {name!r}")
        raw_tensors.append((name, shape, ttype, offset))

    data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    seen: set[str] = set()
    for name, shape, ttype, offset in raw_tensors:
        if name in seen:
            raise GGUFError(f"tensor {name!r} appears twice")
        seen.add(name)
        if ttype not in GGML_TYPES:
            raise GGUFError(f"tensor {name!r} has unknown type {ttype}")
        type_name, block, block_bytes = GGML_TYPES[ttype]
        if shape and shape[0] % block:
            raise GGUFError(f"tensor {name!r}: first dimension {shape[0]} is not a multiple of {block} for {type_name}")
        if offset % alignment:
            raise GGUFError(f"tensor {name!r}: offset {offset} is not aligned to {alignment}")
        nbytes = math.prod(shape) // block * block_bytes
        start = data_offset + offset
        if start + nbytes > size:
            raise GGUFError(f"tensor {name!r} ({nbytes} bytes at offset {start}) ends past the end of the "
                            f"file ({size} bytes): truncated or corrupt")
        tensors.append(TensorInfo(name, shape, type_name, start, nbytes))

    return GGUFFile(version=version, file_size=size, alignment=alignment, data_offset=data_offset,
                    metadata=metadata, tensors=tensors, spans=spans)


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    with path.open("rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


def read(path: Path, *, keep_array: int = DEFAULT_KEEP_ARRAY) -> GGUFFile:
    """Reads a GGUF file's header; GGUFError names what is wrong and where."""
    try:
        with _mapped(Path(path)) as buf:
            return parse(buf, keep_array=keep_array)
    except GGUFError as exc:
        raise GGUFError(f"{Path(path).name}: {exc}") from None
