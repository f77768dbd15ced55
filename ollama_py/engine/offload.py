"""How many layers go to the GPU, estimated from the GGUF before loading.

Ollama's rule for `num_gpu` -1: offload as many layers as fit in free GPU
memory beside their KV cache and the compute buffers. llama.cpp counts the
output layer as layer n_layer and offloads the *last* n_gpu_layers of the
n_layer + 1, so the output layer goes first, then blocks from the top down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ollama_py.store import gguf
from ollama_py.store.gguf import GGUFFile

MIB = 1 << 20
# Bytes per KV element for the cache types Ollama offers (q8_0 and q4_0 are
# 32-element blocks of 34 and 18 bytes).
KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# What a CUDA context and cuBLAS take on the device before any tensor.
DEVICE_OVERHEAD = 512 * MIB
_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Sizes:
    """A model's memory, split as llama.cpp places it."""

    blocks: tuple[int, ...]  # weight bytes of each repeating layer
    output: int  # the output layer (its own weight, or the tied embedding's copy)
    kv_per_block: int  # KV cache bytes of one layer at the planned context
    graph: int  # compute buffer estimate

    @property
    def n_layers(self) -> int:
        """Offloadable layers: the blocks and the output layer."""
        return len(self.blocks) + 1

    @property
    def total(self) -> int:
        return sum(self.blocks) + self.output + self.kv_per_block * len(self.blocks) + self.graph


@dataclass(frozen=True)
class Plan:
    gpu_layers: int  # the n_gpu_layers to load with
    n_layers: int
    size: int  # everything the model needs
    size_vram: int  # the part of it on the GPU

    @property
    def full(self) -> bool:
        return self.gpu_layers >= self.n_layers


def sizes(info: GGUFFile, *, num_ctx_total: int, kv_cache_type: str, n_ubatch: int) -> Sizes:
    """Per-layer weights from the tensor table, KV from the attention shape."""
    arch = info.architecture or ""
    meta = info.metadata
    n_blocks = int(meta.get(f"{arch}.block_count", 0))
    blocks = [0] * n_blocks
    output = 0
    embedding = 0
    for tensor in info.tensors:
        match = _BLOCK.match(tensor.name)
        if match and int(match.group(1)) < n_blocks:
            blocks[int(match.group(1))] += tensor.nbytes
        elif tensor.name.startswith("output"):
            output += tensor.nbytes
        elif tensor.name == "token_embd.weight":
            embedding = tensor.nbytes
    if not any(t.name == "output.weight" for t in info.tensors):
        output += embedding  # tied embeddings: the output layer uses a copy of them
    n_embd = int(meta.get(f"{arch}.embedding_length", 0))
    n_head = int(meta.get(f"{arch}.attention.head_count", 1)) or 1
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    head_dim = n_embd // n_head
    key_len = int(meta.get(f"{arch}.attention.key_length", head_dim))
    value_len = int(meta.get(f"{arch}.attention.value_length", head_dim))
    kv = int(num_ctx_total * n_head_kv * (key_len + value_len) * KV_BYTES[kv_cache_type])
    n_vocab = int(meta.get(f"{arch}.vocab_size", 0)) or gguf.array_length(meta.get("tokenizer.ggml.tokens"))
    # Logits for a micro-batch dominate for small models; activations scale
    # with the embedding and feed-forward widths.
    n_ff = int(meta.get(f"{arch}.feed_forward_length", 4 * n_embd))
    graph = 4 * n_ubatch * (n_vocab + 2 * n_ff + 4 * n_embd)
    return Sizes(blocks=tuple(blocks), output=output, kv_per_block=kv, graph=graph)


def plan(s: Sizes, *, free_vram: int, num_gpu: int) -> Plan:
    """Layers to offload: num_gpu as asked, or (-1) as many as fit in free_vram."""
    if free_vram <= 0 or num_gpu == 0:
        return Plan(0, s.n_layers, s.total, 0)
    # Layer costs in offload order: the output layer, then blocks from the top.
    costs = [s.output] + [w + s.kv_per_block for w in reversed(s.blocks)]
    limit = s.n_layers if num_gpu < 0 else min(num_gpu, s.n_layers)
    budget = free_vram - DEVICE_OVERHEAD - s.graph
    used = 0
    layers = 0
    for cost in costs[:limit]:
        if num_gpu < 0 and used + cost > budget:
            break
        used += cost
        layers += 1
    return Plan(layers, s.n_layers, s.total, used + s.graph if layers else 0)
