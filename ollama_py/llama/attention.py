"""ollama-py's CPU flash attention (native/attention.cpp), a ggml device beside the CPU's.

In a decode step of several streams on a CPU, attention over a few hundred
cells each is most of the step, and ggml's CPU kernel takes it one cell at a
time with an f16 accumulator. Ours converts each block of cells once for
every query head that shares it and adds up in f32: measured in-process with
the default model on two cores, a step of 8 streams at 900 tokens of context
takes 71 ms instead of 145, one stream at 900 17 ms instead of 24 (the HTTP
figures beside llama-server are in docs/benchmarks.md). A row gets the same bits alone or in any batch.

It takes attention over f16 caches in host memory, up to 63 rows of a
sequence (ggml's tiled kernel is faster for a prompt's longer cuts), without
ALiBi, soft-capping or sinks; ggml keeps the rest. It is not registered in a
process with a GPU or RPC worker: there llama.cpp decides per layer whether
flash attention is supported ("auto"), and a device of ours beside the CPU
would read to it as missing support.
"""

from __future__ import annotations

import logging

from ollama_py.llama.devices import only_cpu
from ollama_py.llama.lib import shim

log = logging.getLogger(__name__)

_enabled = False


def enable() -> bool:
    """Registers the kernel for the contexts this process creates from now on, where it may; whether it is."""
    global _enabled
    if not _enabled and only_cpu():
        shim().ollama_py_attention_register()
        _enabled = True
        log.debug("CPU flash attention: ollama-py's kernel")
    return _enabled


def enabled() -> bool:
    return _enabled


def ops() -> int:
    """Attention nodes the kernel computed in this process so far."""
    return int(shim().ollama_py_attention_ops())
