"""Where llama.cpp put each layer of a model, read from its own load log.

llama.h has no call that says which device holds a layer; llama.cpp logs it
(`load_tensors: layer N assigned to device D`) while it loads, at debug level.
Reading that line reports exactly what llama.cpp did, by free memory or by the
given split, instead of a second guess of its rules.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import msgspec

from ollama_py.llama.lib import native_log

class Placement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A run of consecutive layers on one device (the last layer is the output layer)."""

    device: str  # llama.cpp's device name: CPU, CUDA0, RPC0
    endpoint: str = ""  # host:port of the worker, for an RPC device
    first_layer: int
    last_layer: int

    @property
    def layers(self) -> int:
        return self.last_layer - self.first_layer + 1


def on_cpu(n_layer: int) -> tuple[Placement, ...]:
    """A model that uses no GPU and no worker: every layer (and the output layer) on the CPU."""
    return (Placement(device="CPU", first_layer=0, last_layer=n_layer),)


_ASSIGNED = re.compile(r"load_tensors: layer\s+(\d+) assigned to device (\S+?),")


class _LayerLog(logging.Handler):
    """Keeps the layer assignments logged by one thread (the one loading the model)."""

    def __init__(self, thread: int) -> None:
        super().__init__(logging.DEBUG)
        self.thread = thread
        self.assigned: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and (match := _ASSIGNED.search(record.getMessage())):
            self.assigned[int(match[1])] = match[2]


@contextmanager
def recording() -> Iterator[dict[int, str]]:
    """Layer index to device name, for the model this thread loads inside the `with`.

    llama.cpp's debug lines must reach `logging`: the process that loads must
    leave the native logger at DEBUG (the runner process does; it filters what
    it prints in its handler).
    """
    handler = _LayerLog(threading.get_ident())
    native_log.addHandler(handler)
    try:
        yield handler.assigned
    finally:
        native_log.removeHandler(handler)


def summarize(assigned: Mapping[int, str], endpoints: Mapping[str, str]) -> tuple[Placement, ...]:
    """Consecutive layers on the same device as one Placement, in layer order."""
    runs: list[Placement] = []
    for layer in sorted(assigned):
        device = assigned[layer]
        if runs and runs[-1].device == device and runs[-1].last_layer == layer - 1:
            runs[-1] = msgspec.structs.replace(runs[-1], last_layer=layer)
        else:
            runs.append(Placement(device=device, endpoint=endpoints.get(device, ""), first_layer=layer,
                                  last_layer=layer))
    return tuple(runs)

