"""GPU layer planning from the GGUF, as Ollama's num_gpu promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_py.engine.offload import DEVICE_OVERHEAD, MIB, Sizes, plan, sizes
from ollama_py.store import gguf


@pytest.fixture(scope="module")
def smollm(model_path: Path) -> Sizes:
    return sizes(gguf.read(model_path), num_ctx_total=4096, kv_cache_type="f16", n_ubatch=512)


def test_sizes_match_what_llama_cpp_allocates(smollm: Sizes) -> None:
    assert len(smollm.blocks) == 30 and smollm.n_layers == 31
    # llama.cpp logged "KV buffer size = 90.00 MiB" for this model at 4096 tokens.
    assert smollm.kv_per_block * 30 == 90 * MIB
    # ...and "CUDA0 model buffer size = 92.17 MiB" with all layers offloaded
    # (tied embeddings copied for the output layer).
    weights = sum(smollm.blocks) + smollm.output
    assert weights == pytest.approx(92.17 * MIB, rel=0.005)  # llama.cpp pads each tensor
    # its compute buffer was 97 MiB; the estimate must not be smaller
    assert smollm.graph >= 97 * MIB


def test_q8_kv_cache_takes_about_half(model_path: Path, smollm: Sizes) -> None:
    q8 = sizes(gguf.read(model_path), num_ctx_total=4096, kv_cache_type="q8_0", n_ubatch=512)
    assert q8.kv_per_block == pytest.approx(smollm.kv_per_block * 17 / 32, rel=0.01)


def test_everything_fits_on_a_big_gpu(smollm: Sizes) -> None:
    p = plan(smollm, free_vram=80 * 1024 * MIB, num_gpu=-1)
    assert p.full and p.gpu_layers == 31
    assert p.size_vram == p.size


def test_no_gpu_or_num_gpu_zero_stays_on_cpu(smollm: Sizes) -> None:
    assert plan(smollm, free_vram=0, num_gpu=-1).gpu_layers == 0
    p = plan(smollm, free_vram=80 * 1024 * MIB, num_gpu=0)
    assert p.gpu_layers == 0 and p.size_vram == 0


def test_partial_offload_fills_the_free_memory(smollm: Sizes) -> None:
    free = DEVICE_OVERHEAD + smollm.graph + smollm.output + 10 * (smollm.blocks[0] + smollm.kv_per_block) + 1
    p = plan(smollm, free_vram=free, num_gpu=-1)
    assert p.gpu_layers == 11  # the output layer and the top ten blocks
    assert 0 < p.size_vram < p.size
    less = plan(smollm, free_vram=free - smollm.kv_per_block - smollm.blocks[0], num_gpu=-1)
    assert less.gpu_layers == 10


def test_explicit_num_gpu_is_obeyed(smollm: Sizes) -> None:
    assert plan(smollm, free_vram=80 * 1024 * MIB, num_gpu=5).gpu_layers == 5
    assert plan(smollm, free_vram=80 * 1024 * MIB, num_gpu=500).gpu_layers == 31
