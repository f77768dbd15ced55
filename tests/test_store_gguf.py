"""GGUF metadata without loading the model: the real SmolLM2 file and hand-made hostile headers."""

from __future__ import annotations

import ctypes
import struct
import tracemalloc
from pathlib import Path

import pytest

from ollama_py.llama.lib import LIB_DIR
from ollama_py.llama.model import Model
from ollama_py.store import gguf
from ollama_py.store.gguf import GGUFError

U8, I32, U32, F32, BOOL, STR, ARR, U64 = 0, 5, 4, 6, 7, 8, 9, 10


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def header(kvs: list[bytes], tensors: list[bytes] = (), *, version: int = 3,  # type: ignore[assignment]
           n_kv: int | None = None, n_tensors: int | None = None) -> bytes:
    return (b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                  len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors))


def tensor(name: str, shape: tuple[int, ...], ttype: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape) + \
        struct.pack("<IQ", ttype, offset)


def with_data(head: bytes, nbytes: int) -> bytes:
    padded = head + b"\0" * (-len(head) % 32)
    return padded + b"\1" * nbytes


ARCH = kv("general.architecture", STR, s("llama"))


def test_small_valid_file(tmp_path: Path) -> None:
    head = header([
        ARCH,
        kv("llama.context_length", U32, struct.pack("<I", 2048)),
        kv("llama.embedding_length", U32, struct.pack("<I", 64)),
        kv("general.file_type", U32, struct.pack("<I", 15)),
        kv("tokenizer.chat_template", STR, s("{{ messages }}")),
        kv("tokenizer.ggml.tokens", ARR, struct.pack("<IQ", STR, 3) + s("a") + s("b") + s("<s>")),
        kv("tokenizer.ggml.bos_token_id", U32, struct.pack("<I", 2)),
        kv("flag", BOOL, b"\1"),
        kv("scale", F32, struct.pack("<f", 0.5)),
    ], [tensor("token_embd.weight", (64, 3)), tensor("output_norm.weight", (64,), offset=768)])
    path = tmp_path / "tiny.gguf"
    path.write_bytes(with_data(head, 64 * 3 * 4 + 64 * 4))
    info = gguf.read(path)
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert info.embedding_length == 64
    assert info.file_type == "Q4_K_M"
    assert info.chat_template == "{{ messages }}"
    assert info.parameter_count == 64 * 3 + 64
    assert info.tokenizer.vocab_size == 3
    assert info.tokenizer.bos_token_id == 2
    assert info.metadata["flag"] is True
    assert info.metadata["scale"] == 0.5
    assert [t.name for t in info.tensors] == ["token_embd.weight", "output_norm.weight"]
    assert info.model_info()["general.parameter_count"] == 256


def test_real_smollm2_matches_llama_cpp(model_path: Path, model: Model) -> None:
    info = gguf.read(model_path)
    meta = model.metadata()
    assert info.architecture == meta["general.architecture"] == "llama"
    assert info.parameter_count == model.n_params
    assert gguf.human_number(info.parameter_count) == "134.52M"  # what `ollama show smollm2:135m` prints
    assert info.file_type == "Q4_1"
    assert info.context_length == model.n_ctx_train == 8192
    assert info.embedding_length == model.n_embd == 576
    assert info.chat_template == model.chat_template()
    assert info.tokenizer.model == "gpt2"
    assert info.tokenizer.vocab_size == 49152
    assert info.tokenizer.eos_token_id == 2
    for key, value in info.metadata.items():
        if isinstance(value, (str, int)) and not isinstance(value, bool) and key in meta:
            assert str(value) == meta[key], key
    assert info.model_info()["tokenizer.ggml.tokens"] is None


def test_real_file_keeps_long_arrays_when_asked(model_path: Path) -> None:
    tokens = gguf.read(model_path, keep_array=100_000).metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 49152
    assert "<|im_start|>" in tokens


def test_type_table_matches_libggml() -> None:
    lib = ctypes.CDLL(str(LIB_DIR / "libggml-base.so.0"))
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_name.restype = ctypes.c_char_p
    for ttype, (name, block, size) in gguf.GGML_TYPES.items():
        assert (lib.ggml_type_name(ttype).decode().upper(), lib.ggml_blck_size(ttype),
                lib.ggml_type_size(ttype)) == (name, block, size)


@pytest.mark.parametrize(("n", "label"), [
    (134_515_008, "134.52M"), (8_030_261_248, "8.0B"), (7_000_000_000, "7B"), (360_000_000, "360M"),
    (22_000, "22K"), (999, "999"),
])
def test_human_number_like_ollama(n: int, label: str) -> None:
    assert gguf.human_number(n) == label


HUGE = 2**63 - 1

HOSTILE: dict[str, tuple[bytes, str]] = {
    "empty file": (b"", "needs 4 bytes"),
    "wrong magic": (b"GGML" + b"\0" * 40, "not a GGUF file"),
    "only magic": (b"GGUF", "version"),
    "version 1": (header([], version=1), "unsupported GGUF version 1"),
    "version 99": (header([], version=99), "unsupported GGUF version 99"),
    "big endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    "absurd kv count": (header([ARCH], n_kv=HUGE), "metadata entries"),
    "absurd tensor count": (header([ARCH], n_tensors=HUGE), "tensors"),
    "kv count past data": (header([ARCH], n_kv=3), "needs"),
    "absurd key length": (header([struct.pack("<Q", 2**62) + b"k" * 20]), "more than the 65535 allowed"),
    "key longer than file": (header([struct.pack("<Q", 5000) + b"k" * 20]), "needs 5000 bytes"),
    "absurd string value": (header([s("general.name") + struct.pack("<IQ", STR, HUGE) + b"x" * 8]),
                            "value of 'general.name'"),
    "absurd u8 array": (header([kv("a", ARR, struct.pack("<IQ", U8, HUGE))]), "items of array 'a'"),
    "absurd u64 array": (header([kv("a", ARR, struct.pack("<IQ", U64, 2**61))]), "items of array 'a'"),
    "absurd string array": (header([kv("a", ARR, struct.pack("<IQ", STR, 2**60))]), "strings of array 'a'"),
    "string array item too long": (header([kv("a", ARR, struct.pack("<IQ", STR, 1) + struct.pack("<Q", 999))]),
                                   "item 0 of array 'a'"),
    "nested array": (header([kv("a", ARR, struct.pack("<IQ", ARR, 1) + b"\0" * 20)]), "unsupported item type 9"),
    "unknown value type": (header([kv("a", 77, b"\0" * 16)]), "unknown value type 77"),
    "duplicate key": (header([ARCH, ARCH]), "appears twice"),
    "zero alignment": (header([kv("general.alignment", U32, struct.pack("<I", 0))]), "power of two"),
    "odd alignment": (header([kv("general.alignment", U32, struct.pack("<I", 3))]), "power of two"),
    "too many dims": (header([ARCH], [s("t") + struct.pack("<I", 1000) + b"\0" * 40]), "1000 dimensions"),
    "long tensor name": (header([ARCH], [tensor("t" * 200, (4,))]), "more than the 63 allowed"),
    "unknown tensor type": (with_data(header([ARCH], [tensor("t", (4,), ttype=4)]), 64), "unknown type 4"),
    "tensor past the end": (with_data(header([ARCH], [tensor("t", (1024, 1024))]), 64), "ends past the end"),
    "absurd tensor dims": (with_data(header([ARCH], [tensor("t", (2**63, 2**63, 2**63, 2**63))]), 64),
                           "ends past the end"),
    "absurd tensor offset": (with_data(header([ARCH], [tensor("t", (4,), offset=2**64 - 32)]), 64),
                             "ends past the end"),
    "unaligned offset": (with_data(header([ARCH], [tensor("t", (4,), offset=3)]), 64), "not aligned"),
    "block mismatch": (with_data(header([ARCH], [tensor("t", (33,), ttype=2)]), 64), "not a multiple of 32"),
    "duplicate tensor": (with_data(header([ARCH], [tensor("t", (4,)), tensor("t", (4,), offset=32)]), 64),
                         "appears twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_fail_clearly_without_allocating(tmp_path: Path, case: str) -> None:
    data, says = HOSTILE[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError) as err:
            gguf.read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert says in str(err.value)
    assert str(err.value).startswith("hostile.gguf: ")
    assert peak < 1 << 20


@pytest.mark.parametrize("keep", [1 << 20, 4 << 20, 50 << 20])
def test_truncated_real_file_is_refused(tmp_path: Path, model_path: Path, keep: int) -> None:
    path = tmp_path / "cut.gguf"
    with model_path.open("rb") as src:
        path.write_bytes(src.read(keep))
    with pytest.raises(GGUFError, match="truncated"):
        gguf.read(path)
