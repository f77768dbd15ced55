"""llama.cpp's backend devices (CPU, CUDA, RPC workers) and RPC registration."""

from __future__ import annotations

import ctypes
import logging
import os
import socket
from dataclasses import dataclass

from ollama_py.llama import capi
from ollama_py.llama.lib import LlamaError, ggml

log = logging.getLogger(__name__)

_TYPE_NAMES = {capi.DEV_CPU: "cpu", capi.DEV_GPU: "gpu", capi.DEV_IGPU: "igpu",
               capi.DEV_ACCEL: "accel", capi.DEV_META: "meta"}


@dataclass(frozen=True)
class Device:
    handle: int
    name: str  # "CPU", "CUDA0", "RPC0"
    description: str  # the GPU's marketing name, or an RPC worker's endpoint
    kind: str  # cpu, gpu, igpu, accel or meta
    memory_free: int
    memory_total: int
    device_id: str  # PCI bus id where known, else ""


def _device(handle: int) -> Device:
    props = capi.ggml_backend_dev_props()
    ggml().ggml_backend_dev_get_props(handle, ctypes.byref(props))
    return Device(
        handle=handle,
        name=(props.name or b"").decode(errors="replace"),
        description=(props.description or b"").decode(errors="replace"),
        kind=_TYPE_NAMES.get(props.type, str(props.type)),
        memory_free=int(props.memory_free),
        memory_total=int(props.memory_total),
        device_id=(props.device_id or b"").decode(errors="replace").lower(),
    )


def devices() -> list[Device]:
    """Every device llama.cpp can place layers on, in its own order (not accelerators, which take some ops
    of the CPU's layers, such as ollama-py's attention kernel)."""
    lib = ggml()
    found = [_device(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]
    return [device for device in found if device.kind != "accel"]


def only_cpu() -> bool:
    """Whether the CPU is this process's only device (no GPU, no RPC worker registered)."""
    return all(device.kind == "cpu" for device in devices())


def probe(endpoint: str, timeout: float = 3.0) -> None:
    """Raises unless a TCP connection to host:port opens.

    llama.cpp aborts the whole process when an RPC endpoint cannot be reached,
    so every endpoint is tried from Python first.
    """
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise LlamaError(f"RPC endpoint {endpoint!r} is not host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise LlamaError(f"RPC worker {endpoint} is unreachable: {exc}") from None


def add_rpc_server(endpoint: str) -> list[Device]:
    """Registers an RPC worker; returns the devices it adds (listed first by llama.cpp)."""
    probe(endpoint)
    lib = ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise LlamaError("this llama.cpp build has no RPC backend")
    address = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
    if not address:
        raise LlamaError("the RPC backend does not export ggml_backend_rpc_add_server")
    # ggml-rpc sends a graph it sent last to a worker device again as "run the one you stored", and the
    # worker forgets what it stored whenever any of its buffers is freed. With two contexts on one worker
    # (two models of a runner process; a model's embedding context beside its generating one) the worker
    # then re-ran the other's graph (wrong logits, no error), or, after the other freed a buffer, found none
    # and hung up (llama.cpp aborts the process). A context that rebuilds its graph every step sends it whole.
    # llama.cpp reads this when a context is created: every context of this process comes after.
    os.environ["LLAMA_GRAPH_REUSE_DISABLE"] = "1"
    known = devices()
    same = [d for d in known if d.description == endpoint]
    if same:
        return same
    before = {d.handle for d in known}
    server_reg = capi.rpc_add_server_fn(address)(endpoint.encode())
    if not server_reg:
        raise LlamaError(f"RPC worker {endpoint} offers no devices")
    lib.ggml_backend_register(server_reg)
    added = [d for d in devices() if d.handle not in before]
    log.info("registered RPC worker %s: %s", endpoint, ", ".join(d.name for d in added))
    return added
