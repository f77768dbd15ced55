"""A loaded GGUF model and its vocabulary."""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

from ollama_py.llama import capi
from ollama_py.llama.adapter import LoraAdapter
from ollama_py.llama.handle import Handle
from ollama_py.llama.lib import LlamaError, llama

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# load_mode values of llama_model_params
_LOAD_NONE, _LOAD_MMAP, _LOAD_MLOCK, _LOAD_MMAP_MLOCK = 0, 1, 2, 3


class ModelLoadError(LlamaError):
    """The file is missing, not a GGUF model, or llama.cpp refused it."""


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """What changes how weights are placed; a different value means a reload."""

    n_gpu_layers: int = -1  # negative: every layer that the devices take
    main_gpu: int = 0
    use_mmap: bool = True
    use_mlock: bool = False
    vocab_only: bool = False
    devices: tuple[int, ...] | None = None  # ggml device handles; None: all suitable
    tensor_split: tuple[float, ...] | None = None

    def to_c(self) -> tuple[capi.llama_model_params, list[object]]:
        """The C params, and the buffers that must outlive the load call."""
        params = llama().llama_model_default_params()
        params.n_gpu_layers = self.n_gpu_layers
        params.main_gpu = self.main_gpu
        params.load_mode = {(True, False): _LOAD_MMAP, (False, False): _LOAD_NONE,
                            (False, True): _LOAD_MLOCK, (True, True): _LOAD_MMAP_MLOCK}[
            (self.use_mmap, self.use_mlock)]
        params.vocab_only = self.vocab_only
        keep: list[object] = []
        if self.devices is not None:
            devs = (ctypes.c_void_p * (len(self.devices) + 1))(*self.devices, None)
            params.devices = ctypes.cast(devs, ctypes.POINTER(ctypes.c_void_p))
            keep.append(devs)
        if self.tensor_split is not None:
            n = int(llama().llama_max_devices())
            split = (ctypes.c_float * n)(*self.tensor_split[:n])
            params.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
            keep.append(split)
        return params, keep


def check_gguf(path: Path) -> None:
    """Fails early, in Python, for the mistakes that are easy to name."""
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF model file (magic {magic!r}, expected {GGUF_MAGIC!r})")


class Vocab:
    """Tokenization. The vocab belongs to its model and lives as long as it."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._ptr = llama().llama_model_get_vocab(model.ptr)
        lib = llama()
        self.n_tokens: int = lib.llama_vocab_n_tokens(self.ptr)
        self.bos: int = lib.llama_vocab_bos(self.ptr)
        self.eos: int = lib.llama_vocab_eos(self.ptr)
        self.eot: int = lib.llama_vocab_eot(self.ptr)
        self.add_bos: bool = lib.llama_vocab_get_add_bos(self.ptr)
        self.add_eos: bool = lib.llama_vocab_get_add_eos(self.ptr)

    @property
    def ptr(self) -> int:
        self.model.ptr  # the vocab dies with its model
        return int(self._ptr)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            out = (capi.llama_token * capacity)()
            n = llama().llama_tokenize(self.ptr, data, len(data), out, capacity, add_special, parse_special)
            if n >= 0:
                return list(out[:n])
            if n == -(2**31):
                raise LlamaError("tokenization overflowed int32")
            capacity = -n
        raise LlamaError("llama_tokenize kept asking for a larger buffer")

    def token_to_piece(self, token: int, *, special: bool = False) -> bytes:
        """The token's bytes, possibly an incomplete UTF-8 sequence."""
        buf = ctypes.create_string_buffer(64)
        n = llama().llama_token_to_piece(self.ptr, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama().llama_token_to_piece(self.ptr, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int], *, remove_special: bool = False, unparse_special: bool = False) -> str:
        arr = (capi.llama_token * len(tokens))(*tokens)
        capacity = max(16, len(tokens) * 8)
        for _ in range(2):
            buf = ctypes.create_string_buffer(capacity)
            n = llama().llama_detokenize(self.ptr, arr, len(tokens), buf, capacity, remove_special, unparse_special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            capacity = -n
        raise LlamaError("llama_detokenize kept asking for a larger buffer")

    def is_eog(self, token: int) -> bool:
        return bool(llama().llama_vocab_is_eog(self.ptr, token))

    def text(self, token: int) -> str:
        return (llama().llama_vocab_get_text(self.ptr, token) or b"").decode("utf-8", errors="replace")


class Model(Handle):
    """A model loaded from a GGUF file; contexts keep it alive."""

    def __init__(self, path: str | Path, options: ModelOptions | None = None,
                 adapters: tuple[Path, ...] = ()) -> None:
        """Loads the weights and then each LoRA adapter in `adapters`, which every context of it applies."""
        path = Path(path)
        check_gguf(path)
        opts = options or ModelOptions()
        params, keep = opts.to_c()
        ptr = llama().llama_model_load_from_file(str(path).encode(), params)
        del keep
        if not ptr:
            raise ModelLoadError(f"llama.cpp could not load {path} (a truncated or unsupported GGUF file; "
                                 "see the log for the reason)")
        super().__init__(ptr, llama().llama_model_free, what=f"model {path.name}")
        self.path = path
        self.options = opts
        self.vocab = Vocab(self)
        lib = llama()
        self.n_ctx_train: int = lib.llama_model_n_ctx_train(ptr)
        self.n_embd: int = lib.llama_model_n_embd(ptr)
        self.n_layer: int = lib.llama_model_n_layer(ptr)
        self.n_swa: int = lib.llama_model_n_swa(ptr)  # the sliding attention window; 0: none
        self.size: int = lib.llama_model_size(ptr)
        self.n_params: int = lib.llama_model_n_params(ptr)
        self.has_encoder: bool = lib.llama_model_has_encoder(ptr)
        self.has_decoder: bool = lib.llama_model_has_decoder(ptr)
        self.adapters: list[LoraAdapter] = []
        try:
            self.adapters = [LoraAdapter(self, Path(a)) for a in adapters]
        except BaseException:
            self.close()
            raise

    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        llama().llama_model_desc(self.ptr, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def metadata(self) -> dict[str, str]:
        """GGUF key/values as strings (arrays are not reported by llama.cpp)."""
        lib = llama()
        out: dict[str, str] = {}
        for i in range(lib.llama_model_meta_count(self.ptr)):
            out[self._meta(lib.llama_model_meta_key_by_index, i)] = self._meta(
                lib.llama_model_meta_val_str_by_index, i)
        return out

    def _meta(self, fn: object, index: int) -> str:
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = fn(self.ptr, index, buf, size)  # type: ignore[operator]
            if n < 0:
                return ""
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def chat_template(self, name: str | None = None) -> str | None:
        raw = llama().llama_model_chat_template(self.ptr, name.encode() if name else None)
        return raw.decode("utf-8") if raw else None
