"""LoRA adapters: loaded onto a model once, applied to each of its contexts.

A context does not inherit its model's adapters in llama.cpp; `Model` keeps
the adapters it was loaded with and `Context` applies them when it is made,
so the runner's context and the embedder's alike compute with them.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from ollama_py.llama.handle import Handle
from ollama_py.llama.lib import LlamaError, llama

log = logging.getLogger(__name__)


class AdapterLoadError(LlamaError):
    """llama.cpp refused the adapter: not a LoRA GGUF, or built for another architecture or shape."""


class LoraAdapter(Handle):
    """A GGUF LoRA loaded for one model; `scale` multiplies the adapter's own alpha/rank scale."""

    def __init__(self, model: Handle, path: Path, scale: float = 1.0) -> None:
        """`model` is the loaded model's handle (a `Model`), which must outlive the adapter."""
        ptr = llama().llama_adapter_lora_init(model.ptr, str(path).encode())
        if not ptr:
            raise AdapterLoadError(f"llama.cpp could not load the LoRA adapter {path.name} for this model (not a "
                                   "LoRA GGUF, or built for another architecture or shape; see the log)")
        super().__init__(ptr, llama().llama_adapter_lora_free, parent=model, what=f"adapter {path.name}")
        self.path = path
        self.scale = scale


def apply(context_ptr: int, adapters: list[LoraAdapter]) -> None:
    """Sets exactly `adapters` on a context."""
    if not adapters:
        return
    handles = (ctypes.c_void_p * len(adapters))(*[a.ptr for a in adapters])
    scales = (ctypes.c_float * len(adapters))(*[a.scale for a in adapters])
    code = llama().llama_set_adapters_lora(context_ptr, handles, len(adapters), scales)
    if code != 0:
        raise AdapterLoadError(f"llama.cpp could not apply the LoRA adapters (error {code})")
