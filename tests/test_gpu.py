"""GPU discovery: NVML's answer, llama.cpp's device list, and their agreement."""

from __future__ import annotations

from ollama_py import gpu
from ollama_py.llama.devices import devices


def test_discovery_and_llama_devices_agree() -> None:
    found = gpu.discover()
    backend = devices()
    assert any(d.kind == "cpu" and d.memory_total > 0 for d in backend)
    if not found.gpus:
        assert found.reason
        assert not [d for d in backend if d.name.startswith("CUDA")]
    else:
        assert gpu.agreement(found, backend) == []
        for g in found.gpus:
            assert g.memory_total >= g.memory_free > 0
            assert g.compute_capability >= (5, 0)


def test_bus_ids_are_normalised_as_llama_cpp_writes_them() -> None:
    assert gpu._normal_bus_id("00000000:C1:00.0") == "0000:c1:00.0"
