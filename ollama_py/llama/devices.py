"""llama.cpp's backend devices (CPU, CUDA, RPC workers) and RPC registration."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ollama_py.llama import capi
from ollama_py.llama.lib import LlamaError, ggml

log = logging.getLogger(__name__)

# ggml-rpc remembers, per worker device and without a lock, which graph it computed last, and sends only
# "compute it again" when that graph comes back. Two threads computing on one worker at once (two models
# of one runner process) can interleave between that check and the send, and the worker then re-runs the
# other model's graph: wrong logits, no error. So once a worker is registered, computing is one at a time.
_workers_registered = threading.Event()
_compute_on_workers = threading.Lock()

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
    """Every device llama.cpp can place layers on, in its own order."""
    lib = ggml()
    return [_device(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]


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
    known = devices()
    same = [d for d in known if d.description == endpoint]
    if same:
        return same
    before = {d.handle for d in known}
    server_reg = capi.rpc_add_server_fn(address)(endpoint.encode())
    if not server_reg:
        raise LlamaError(f"RPC worker {endpoint} offers no devices")
    lib.ggml_backend_register(server_reg)
    _workers_registered.set()
    added = [d for d in devices() if d.handle not in before]
    log.info("registered RPC worker %s: %s", endpoint, ", ".join(d.name for d in added))
    return added


@contextlib.contextmanager
def computing() -> Iterator[None]:
    """Held around every graph computation (decode, encode, an image's projection) of this process."""
    if not _workers_registered.is_set():
        yield
        return
    with _compute_on_workers:
        yield
