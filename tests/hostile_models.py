"""Hostile models for the runner-isolation tests, written from the default GGUF.

Each model here passes every check our Python side makes (the GGUF reader in
`ollama_py/store/gguf.py`, the checks of `/api/create`) and then takes down the
process that hands it to llama.cpp: a GGML_ASSERT at load or at the first
tokenize (SIGABRT), a Jinja chat template that recurses until the stack runs
out (SIGSEGV), or one that never finishes rendering, looping or growing a string
until memory runs out. llama.cpp renders a model's Jinja template at load, to
learn what it can do (`common_chat_templates_init`), so a template's damage is
done at load.

The GGUF writer copies the source file's metadata entries and tensor infos as
they are, replaces or adds the entries asked for, and copies the tensor data
after a fresh alignment pad: tensor offsets are relative to the data section,
so they stay valid. Nothing here needs the `gguf` package.
"""

from __future__ import annotations

import mmap
import shutil
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

# GGUF value types (the specification's numbering).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
           BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class Value:
    """A metadata value to write: its GGUF type, and for an array the type of its items."""

    type: int
    value: object
    item_type: int | None = None


def string(text: str) -> Value:
    return Value(STRING, text)


def u32(n: int) -> Value:
    return Value(UINT32, n)


def strings(items: list[str]) -> Value:
    return Value(ARRAY, items, STRING)


# ---- the GGUF rewriter ----------------------------------------------------------------


class _Reader:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> int | float | bool:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value  # type: ignore[no-any-return]

    def text(self) -> str:
        n = int(self.take("<Q"))
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int) -> object:
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == STRING:
            return self.text()
        if vtype == ARRAY:
            item_type = int(self.take("<I"))
            count = int(self.take("<Q"))
            return [self.value(item_type) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")

    def skip(self, vtype: int) -> None:
        if vtype in _SCALAR:
            self.pos += struct.calcsize(_SCALAR[vtype])
        elif vtype == STRING:
            self.pos += 8 + int(struct.unpack_from("<Q", self.buf, self.pos)[0])
        elif vtype == ARRAY:
            item_type = int(self.take("<I"))
            count = int(self.take("<Q"))
            if item_type in _SCALAR:
                self.pos += count * struct.calcsize(_SCALAR[item_type])
            else:
                for _ in range(count):
                    self.skip(item_type)
        else:
            raise ValueError(f"unknown GGUF value type {vtype}")


def _encode_text(text: str) -> bytes:
    raw = text.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def _encode_value(vtype: int, value: object, item_type: int | None = None) -> bytes:
    if vtype in _SCALAR:
        return struct.pack(_SCALAR[vtype], value)
    if vtype == STRING:
        assert isinstance(value, str)
        return _encode_text(value)
    if vtype == ARRAY:
        assert item_type is not None and isinstance(value, list)
        return struct.pack("<IQ", item_type, len(value)) + b"".join(_encode_value(item_type, v) for v in value)
    raise ValueError(f"unknown GGUF value type {vtype}")


def _encode_kv(key: str, v: Value) -> bytes:
    return _encode_text(key) + struct.pack("<I", v.type) + _encode_value(v.type, v.value, v.item_type)


@dataclass(frozen=True)
class _Layout:
    version: int
    n_tensors: int
    kvs: dict[str, tuple[int, int, int]]  # key -> (value type, start of the entry, end of the entry)
    tensor_infos: tuple[int, int]  # (start, end) of the tensor info block
    data_start: int


def _layout(buf: mmap.mmap) -> _Layout:
    r = _Reader(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("not a GGUF file")
    r.pos = 4
    version = int(r.take("<I"))
    n_tensors = int(r.take("<Q"))
    n_kv = int(r.take("<Q"))
    kvs: dict[str, tuple[int, int, int]] = {}
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        start = r.pos
        key = r.text()
        vtype = int(r.take("<I"))
        if key == "general.alignment":
            alignment = int(r.value(vtype))  # type: ignore[call-overload]
        else:
            r.skip(vtype)
        kvs[key] = (vtype, start, r.pos)
    infos_start = r.pos
    for _ in range(n_tensors):
        r.text()
        n_dims = int(r.take("<I"))
        r.pos += 8 * n_dims + 4 + 8  # dims, type, offset
    infos_end = r.pos
    data_start = -(-infos_end // alignment) * alignment
    return _Layout(version, n_tensors, kvs, (infos_start, infos_end), data_start)


def read_value(src: Path, key: str) -> object:
    """One metadata value of a GGUF file, arrays in full (the token list: 49,152 strings)."""
    with src.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        layout = _layout(buf)
        vtype, start, _ = layout.kvs[key]
        r = _Reader(buf)
        r.pos = start
        r.text()
        r.take("<I")
        return r.value(vtype)


def rewrite(src: Path, dst: Path, changes: Mapping[str, Value | None]) -> Path:
    """Copies the GGUF `src` to `dst` with metadata entries replaced, added (a Value) or removed (None)."""
    with src.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        layout = _layout(buf)
        alignment_kv = layout.kvs.get("general.alignment")
        if "general.alignment" in changes or alignment_kv is not None:
            raise ValueError("the rewriter keeps the default alignment only")
        entries: list[bytes] = []
        for key, (_, start, end) in layout.kvs.items():
            if key not in changes:
                entries.append(bytes(buf[start:end]))
            elif (new := changes[key]) is not None:
                entries.append(_encode_kv(key, new))
        entries += [_encode_kv(key, v) for key, v in changes.items() if key not in layout.kvs and v is not None]
        head = b"GGUF" + struct.pack("<IQQ", layout.version, layout.n_tensors, len(entries)) + b"".join(entries)
        head += bytes(buf[layout.tensor_infos[0]:layout.tensor_infos[1]])
        head += b"\0" * (-len(head) % _DEFAULT_ALIGNMENT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with dst.open("wb") as out:
            out.write(head)
            f.seek(layout.data_start)
            shutil.copyfileobj(f, out, 1 << 20)
    return dst


# ---- the hostile models -----------------------------------------------------------------
#
# What each one does to the pinned llama.cpp (vendor/llama.cpp, see PIN) is written beside it, as observed by
# loading it with `ollama_py.llama.model.Model` and `ollama_py.llama.shim.ChatTemplates` in a scratch process.

# Each entry: what to change in the default GGUF, and the assertion it trips (llama.cpp at vendor/llama.cpp, see PIN).
# Observed on the pinned build, in a scratch process: each aborts (SIGABRT, exit 134) inside
# llama_model_load_from_file, before any tensor is read, with the GGML_ASSERT line named here.
LOAD_ABORTS: dict[str, Callable[[Path], dict[str, Value | None]]] = {
    # llama-model.cpp: `GGML_ASSERT(hparams.rope_scaling_type_train != LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED)`;
    # a name not in LLAMA_ROPE_SCALING_TYPES maps to UNSPECIFIED.
    "rope_scaling_type": lambda src: {"llama.rope.scaling.type": string("hostile")},
    # llama-vocab.cpp: `GGML_ASSERT(id_to_token.size() == token_to_id.size())`.
    "duplicated_token": lambda src: {"tokenizer.ggml.tokens": _duplicated_tokens(src)},
}
# Also seen to abort the same way, left out to keep the suite short: `llama.block_count` 0 or 100000
# (`n_layer_all <= LLAMA_MAX_LAYERS`) and `llama.expert_count` 1 (`n_expert_used_max > 0`). Not here: an
# unknown `tokenizer.ggml.model` is a clean load error ("unknown tokenizer") in the pinned llama.cpp.


def _duplicated_tokens(src: Path) -> Value:
    tokens = read_value(src, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list) and len(tokens) > 300
    tokens = list(tokens)
    tokens[300] = tokens[299]  # two ordinary tokens, past the special ones at the start
    return strings(tokens)


def load_abort(src: Path, folder: Path, kind: str = "rope_scaling_type") -> Path:
    """A model whose metadata trips a GGML_ASSERT while llama.cpp loads it (SIGABRT)."""
    return rewrite(src, folder / f"load-abort-{kind}.gguf", LOAD_ABORTS[kind](src))


# Models that load (and render their chat template) cleanly, and abort at the first tokenize.
TOKENIZE_ABORTS: dict[str, dict[str, Value | None]] = {
    # A T5 (UGM) vocabulary has no BOS token by default; with the BOS id removed and add_bos_token set, the
    # first tokenize with add_special trips llama-vocab.cpp `GGML_ASSERT(special_bos_id != LLAMA_TOKEN_NULL)`
    # (SIGABRT). Tokenizing without special tokens works, so does the load's own newline lookup.
    "no_bos": {"tokenizer.ggml.model": string("t5"), "tokenizer.ggml.bos_token_id": None,
               "tokenizer.ggml.add_bos_token": Value(BOOL, True)},
    # GPT-2 byte-level BPE tokens read as a SentencePiece ("llama") vocabulary: the SPM tokenizer turns a space
    # into U+2581, finds no token for it nor a byte token `<0xE2>`, and `llama_vocab::byte_to_token` throws
    # std::out_of_range from `token_to_id.at()` through the C API: ggml's terminate handler aborts (SIGABRT).
    # Any text with a space or a newline does it.
    "spm_bytes": {"tokenizer.ggml.model": string("llama")},
}


def tokenize_abort(src: Path, folder: Path, kind: str = "no_bos") -> Path:
    """A model that loads, and aborts the first time a prompt is tokenized (SIGABRT)."""
    return rewrite(src, folder / f"tokenize-abort-{kind}.gguf", TOKENIZE_ABORTS[kind])


# The templates hold no `<|im_start|>`/`<|im_end|>`: a GGUF template with both is replaced by our ChatML Go template
# at import (`create.derived_template`), and would never reach llama.cpp's renderer.

# A macro that calls itself: llama.cpp's Jinja interpreter recurses in C++ until the stack runs out: SIGSEGV
# (exit 139) in ChatTemplates(), at load, whether the template is the GGUF's or an override.
RECURSIVE_TEMPLATE = (
    "{% macro down(n) %}{{ down(n + 1) }}{% endmacro %}"
    "{% for message in messages %}{{ message['content'] }}{% endfor %}{{ down(0) }}"
)

# Three nested loops of 100,000: 10^15 iterations that allocate nothing lasting (`range` is built eagerly, so one
# range of 10^15 would be a memory bomb instead). ChatTemplates() never returns; resident memory stays flat
# (about 240 MB with the model) while it spins on a core.
LOOPING_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)

# A string that doubles 64 times: 2^64 bytes, so memory runs out long before the loop ends. ChatTemplates() grows
# at a few hundred MB a second with no bound of its own. Under a 4 GB address-space limit each render dies of
# std::bad_alloc near 2.7 GB resident, which llama.cpp's capability probes catch and retry with the next probe:
# ChatTemplates() returned after ~50 s (every capability false), apply() failed after another ~90 s with
# "std::bad_alloc"; memory cycled between 0.2 and 2.7 GB the whole time.
GROWING_TEMPLATE = (
    "{% set ns = namespace(s='grow') %}"
    "{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    "{% for message in messages %}{{ message['content'] }}{% endfor %}{{ ns.s }}"
)


def with_template(src: Path, folder: Path, name: str, template: str) -> Path:
    """The default model with `template` as its GGUF's own `tokenizer.chat_template`."""
    return rewrite(src, folder / f"{name}.gguf", {"tokenizer.chat_template": string(template)})


def recursive_gguf(src: Path, folder: Path) -> Path:
    return with_template(src, folder, "recursive-template", RECURSIVE_TEMPLATE)


def looping_gguf(src: Path, folder: Path) -> Path:
    return with_template(src, folder, "looping-template", LOOPING_TEMPLATE)


def growing_gguf(src: Path, folder: Path) -> Path:
    return with_template(src, folder, "growing-template", GROWING_TEMPLATE)
