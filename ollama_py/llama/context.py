"""An inference context: KV cache, decode, logits and embeddings.

A context is not thread-safe; the engine gives each one to a single thread.
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ollama_py.llama import adapter, attention, capi
from ollama_py.llama.batch import Batch
from ollama_py.llama.handle import Handle
from ollama_py.llama.lib import LlamaError, llama, shim
from ollama_py.llama.model import Model


def physical_cores() -> int:
    """CPU cores without their hyperthread siblings, as llama-server counts threads: a sibling shares the
    core's vector units, so a second thread on it only slows the matrix work down."""
    cores: set[str] = set()
    for siblings in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings"):
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            continue
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(len(cores) or available, available))


class DecodeError(LlamaError):
    """llama_decode failed; `code` is its return value."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class KVCacheFull(DecodeError):
    """No room in the KV cache for this batch (llama_decode returned 1)."""


@dataclass(frozen=True, kw_only=True)
class ContextOptions:
    n_ctx: int = 4096
    n_batch: int = 512
    n_ubatch: int = 512
    n_seq_max: int = 1
    n_threads: int = 0  # 0: the physical cores
    n_threads_batch: int = 0
    embeddings: bool = False
    pooling: int = capi.POOLING_UNSPECIFIED
    flash_attn: int = capi.FLASH_ATTN_AUTO
    type_k: int = capi.GGML_TYPE_F16
    type_v: int = capi.GGML_TYPE_F16
    kv_unified: bool = True  # slots share one pool, so a long chat can use the whole n_ctx
    offload_kqv: bool = True

    def to_c(self) -> capi.llama_context_params:
        params = llama().llama_context_default_params()
        cpus = physical_cores()
        params.n_ctx = self.n_ctx
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_ubatch, self.n_batch)
        params.n_seq_max = self.n_seq_max
        params.n_threads = self.n_threads or cpus
        params.n_threads_batch = self.n_threads_batch or cpus
        params.embeddings = self.embeddings
        params.pooling_type = self.pooling
        # "auto" is on wherever the layers' devices support it, and on a CPU they do; llama.cpp's own check
        # would take ollama-py's attention device for missing support (llama/attention.py).
        auto = self.flash_attn == capi.FLASH_ATTN_AUTO
        params.flash_attn_type = capi.FLASH_ATTN_ENABLED if auto and attention.enabled() else self.flash_attn
        params.type_k = self.type_k
        params.type_v = self.type_v
        params.kv_unified = self.kv_unified
        params.offload_kqv = self.offload_kqv
        params.no_perf = False
        return params


class Context(Handle):
    def __init__(self, model: Model, options: ContextOptions | None = None) -> None:
        opts = options or ContextOptions()
        ptr = llama().llama_init_from_model(model.ptr, opts.to_c())
        if not ptr:
            raise LlamaError(f"llama.cpp could not create a context (n_ctx={opts.n_ctx}, "
                             f"n_seq_max={opts.n_seq_max}); see the log for the reason")
        super().__init__(ptr, llama().llama_free, parent=model, what="context")
        self.model = model
        adapter.apply(ptr, model.adapters)
        self.options = opts
        lib = llama()
        self.memory = lib.llama_get_memory(ptr)
        self.n_ctx: int = lib.llama_n_ctx(ptr)
        self.n_ctx_seq: int = lib.llama_n_ctx_seq(ptr)
        self.n_batch: int = lib.llama_n_batch(ptr)
        self.n_seq_max: int = lib.llama_n_seq_max(ptr)
        self.pooling: int = lib.llama_pooling_type(ptr)
        self._n_vocab = model.vocab.n_tokens
        self._reference = False

    def reference_kernels(self, on: bool) -> None:
        """Whether ggml's CPU backends compute with their reference kernels from now on.

        For a micro-batch holding one row of one sequence, once its KV view
        reaches 512 cells, ggml's CPU flash attention splits the cells across
        threads and merges the partial sums: another order of additions than
        it uses for several rows, so that row's logits differ in the last bits
        from what the same token gets beside others. llama.cpp cuts a batch
        into such micro-batches by itself (a sequence whose id does not follow
        the previous one's, a draft's rows past its sequence's first), so a
        caller that needs a row's logits independent of its company (the
        runner's generated tokens) decodes them with the reference kernels,
        which take the row-by-row path always (native/shim.cpp).
        """
        if on != self._reference:
            shim().ollama_py_cpu_reference(self.ptr, on)
            self._reference = on

    def decode(self, batch: Batch, *, reference: bool = False) -> None:
        self.reference_kernels(reference)
        code = llama().llama_decode(self.ptr, batch.c)
        if code == 0:
            return
        if code == 1:
            raise KVCacheFull(code, "no room in the KV cache for this batch")
        if code == 2:
            raise DecodeError(code, "decode was aborted")
        if code == -1:
            raise DecodeError(code, "invalid batch (token ids, positions or sequence ids)")
        raise DecodeError(code, f"llama_decode failed with {code}")

    def encode(self, batch: Batch) -> None:
        self.reference_kernels(False)
        code = llama().llama_encode(self.ptr, batch.c)
        if code != 0:
            raise DecodeError(code, f"llama_encode failed with {code}")

    def logits(self, index: int) -> ctypes.Array[ctypes.c_float]:
        """The logits row of batch index `index`, valid until the next decode."""
        row = llama().llama_get_logits_ith(self.ptr, index)
        if not row:
            raise LlamaError(f"no logits for batch index {index} (was it marked as an output?)")
        return (ctypes.c_float * self._n_vocab).from_address(ctypes.addressof(row.contents))

    def embedding(self, seq_id: int, *, normalize: bool = True) -> list[float]:
        """The pooled embedding of a sequence, L2-normalised unless asked not to."""
        lib = llama()
        n = self.model.n_embd
        if self.pooling == capi.POOLING_RANK:
            n = max(1, llama().llama_model_n_cls_out(self.model.ptr))
        vec = lib.llama_get_embeddings_seq(self.ptr, seq_id)
        if not vec:
            raise LlamaError(f"no pooled embedding for sequence {seq_id} "
                             "(the context needs embeddings=True and a pooling type)")
        values = list(vec[:n])
        if normalize:
            norm = math.sqrt(sum(v * v for v in values))
            if norm > 0:
                values = [v / norm for v in values]
        return values

    # memory (KV cache), per sequence
    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(llama().llama_memory_seq_rm(self.memory, seq_id, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        llama().llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_keep(self, seq_id: int) -> None:
        llama().llama_memory_seq_keep(self.memory, seq_id)

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        llama().llama_memory_seq_add(self.memory, seq_id, p0, p1, delta)

    def seq_pos_max(self, seq_id: int) -> int:
        return int(llama().llama_memory_seq_pos_max(self.memory, seq_id))

    def seq_pos_min(self, seq_id: int) -> int:
        return int(llama().llama_memory_seq_pos_min(self.memory, seq_id))

    def can_shift(self) -> bool:
        return bool(llama().llama_memory_can_shift(self.memory))

    def seq_state(self, seq_id: int) -> ctypes.Array[ctypes.c_uint8]:
        """A copy of the sequence's KV cells, for `set_seq_state` on this or a like context later."""
        lib = llama()
        size = lib.llama_state_seq_get_size(self.ptr, seq_id)
        data = (ctypes.c_uint8 * size)()
        written = lib.llama_state_seq_get_data(self.ptr, data, size, seq_id)
        if written != size:
            raise LlamaError(f"sequence {seq_id}: state of {size} bytes, {written} written")
        return data

    def set_seq_state(self, data: ctypes.Array[ctypes.c_uint8] | bytearray, seq_id: int) -> bool:
        """Replaces the sequence with a saved state; False when llama.cpp refuses it (the sequence is then empty)."""
        buffer = data if isinstance(data, ctypes.Array) else (ctypes.c_uint8 * len(data)).from_buffer(data)
        return llama().llama_state_seq_set_data(self.ptr, buffer, len(data), seq_id) != 0

    def clear(self) -> None:
        llama().llama_memory_clear(self.memory, True)

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        llama().llama_set_n_threads(self.ptr, n_threads, n_threads_batch)

    def perf(self) -> capi.llama_perf_context_data:
        return llama().llama_perf_context(self.ptr)
