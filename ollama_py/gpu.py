"""NVIDIA GPU discovery through NVML, by ctypes, with no new dependency.

NVML answers before llama.cpp is loaded, which is what memory planning needs;
`agreement` then checks that llama.cpp's CUDA devices are the same GPUs.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

from ollama_py.llama.devices import Device

log = logging.getLogger(__name__)

NVML_LIBRARIES = ("libnvidia-ml.so.1", "libnvidia-ml.so")
_NVML_SUCCESS = 0
_BUFFER = 96


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _PciInfo(ctypes.Structure):
    # nvmlPciInfo_t (v3): the legacy 16-byte bus id, then the ids, then the long bus id.
    _fields_ = [
        ("busIdLegacy", ctypes.c_char * 16),
        ("domain", ctypes.c_uint),
        ("bus", ctypes.c_uint),
        ("device", ctypes.c_uint),
        ("pciDeviceId", ctypes.c_uint),
        ("pciSubSystemId", ctypes.c_uint),
        ("busId", ctypes.c_char * 32),
    ]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str
    pci_bus_id: str  # lower case "dddd:bb:dd.f", as llama.cpp reports it
    memory_total: int
    memory_free: int
    driver: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class Discovery:
    gpus: tuple[Gpu, ...]
    reason: str = ""  # why there are none, when there are none


class _NvmlError(RuntimeError):
    pass


def _check(code: int, what: str) -> None:
    if code != _NVML_SUCCESS:
        raise _NvmlError(f"{what} returned NVML error {code}")


def _open_nvml() -> ctypes.CDLL | None:
    for name in NVML_LIBRARIES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _gpu(nvml: ctypes.CDLL, index: int, driver: str) -> Gpu:
    handle = ctypes.c_void_p()
    _check(nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)), "nvmlDeviceGetHandleByIndex")
    name = ctypes.create_string_buffer(_BUFFER)
    _check(nvml.nvmlDeviceGetName(handle, name, _BUFFER), "nvmlDeviceGetName")
    uuid = ctypes.create_string_buffer(_BUFFER)
    _check(nvml.nvmlDeviceGetUUID(handle, uuid, _BUFFER), "nvmlDeviceGetUUID")
    memory = _Memory()
    _check(nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)), "nvmlDeviceGetMemoryInfo")
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor)),
           "nvmlDeviceGetCudaComputeCapability")
    pci = _PciInfo()
    _check(nvml.nvmlDeviceGetPciInfo_v3(handle, ctypes.byref(pci)), "nvmlDeviceGetPciInfo")
    return Gpu(
        index=index,
        name=name.value.decode(errors="replace"),
        uuid=uuid.value.decode(errors="replace"),
        pci_bus_id=_normal_bus_id(pci.busId.decode(errors="replace")),
        memory_total=int(memory.total),
        memory_free=int(memory.free),
        driver=driver,
        compute_capability=(major.value, minor.value),
    )


def _normal_bus_id(bus_id: str) -> str:
    """NVML says "00000000:C1:00.0"; llama.cpp says "0000:c1:00.0"."""
    domain, _, rest = bus_id.strip().partition(":")
    return f"{int(domain or '0', 16):04x}:{rest.lower()}"


def discover() -> Discovery:
    """The NVIDIA GPUs present, or none with the reason."""
    nvml = _open_nvml()
    if nvml is None:
        return Discovery((), "no NVIDIA driver (libnvidia-ml.so not found)")
    try:
        _check(nvml.nvmlInit_v2(), "nvmlInit")
    except _NvmlError as exc:
        return Discovery((), f"NVML did not start: {exc}")
    try:
        driver = ctypes.create_string_buffer(_BUFFER)
        _check(nvml.nvmlSystemGetDriverVersion(driver, _BUFFER), "nvmlSystemGetDriverVersion")
        count = ctypes.c_uint()
        _check(nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)), "nvmlDeviceGetCount")
        gpus = tuple(_gpu(nvml, i, driver.value.decode()) for i in range(count.value))
    except _NvmlError as exc:
        return Discovery((), f"NVML query failed: {exc}")
    finally:
        nvml.nvmlShutdown()
    return Discovery(gpus, "" if gpus else "the NVIDIA driver reports no GPU")


def agreement(discovery: Discovery, backend: list[Device]) -> list[str]:
    """Where NVML and llama.cpp's CUDA devices disagree; empty when they match.

    Matched by PCI bus id; the names must agree and the totals be within 1%
    (the two report memory with different reservations subtracted).
    """
    cuda = {d.device_id: d for d in backend if d.name.startswith("CUDA")}
    problems: list[str] = []
    if len(cuda) != len(discovery.gpus):
        problems.append(f"NVML sees {len(discovery.gpus)} GPUs, llama.cpp {len(cuda)} CUDA devices")
    for gpu in discovery.gpus:
        device = cuda.get(gpu.pci_bus_id)
        if device is None:
            problems.append(f"{gpu.name} at {gpu.pci_bus_id} is not among llama.cpp's devices")
            continue
        if device.description != gpu.name:
            problems.append(f"{gpu.pci_bus_id}: NVML says {gpu.name!r}, llama.cpp {device.description!r}")
        if abs(device.memory_total - gpu.memory_total) > gpu.memory_total / 100:
            problems.append(f"{gpu.pci_bus_id}: NVML total {gpu.memory_total}, llama.cpp {device.memory_total}")
    return problems
