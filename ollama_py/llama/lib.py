"""Finds and loads the shared libraries built by build_backend.py.

Loading happens once per process. It also routes llama.cpp's log output into
`logging` (logger `ollama_py.llama.native`) instead of stderr, so that the
server's own log configuration decides what is shown.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollama_py.llama import capi

log = logging.getLogger(__name__)
native_log = logging.getLogger("ollama_py.llama.native")

LIB_DIR = Path(__file__).resolve().parent.parent / "_lib"

_LEVELS = {
    capi.LOG_DEBUG: logging.DEBUG,
    capi.LOG_INFO: logging.INFO,
    capi.LOG_WARN: logging.WARNING,
    capi.LOG_ERROR: logging.ERROR,
}


class LlamaError(RuntimeError):
    """A llama.cpp call failed; the message says which and why."""


class LibraryNotBuilt(LlamaError):
    """The native libraries are missing: the package was not built."""


class _Functions:
    """Attribute access to C functions with their argtypes and restype set."""

    def __init__(self, cdll: ctypes.CDLL, table: dict[str, tuple[list[Any], Any]]) -> None:
        for name, (argtypes, restype) in table.items():
            fn = getattr(cdll, name)
            fn.argtypes = argtypes
            fn.restype = restype
            setattr(self, name, fn)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"{name} is not declared in ollama_py.llama.capi")


class _NativeLog:
    """Joins llama.cpp's partial log writes into lines, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = ""
        self._level = logging.INFO
        self.callback = capi.log_callback(self._write)

    def _write(self, level: int, text: bytes | None, _user: Any) -> None:
        chunk = (text or b"").decode("utf-8", errors="replace")
        with self._lock:
            if level != capi.LOG_CONT:
                self._level = _LEVELS.get(level, logging.INFO)
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split("\n")
            level_now = self._level
        for line in lines:
            if line.strip():
                native_log.log(level_now, "%s", line)


@dataclass(frozen=True)
class Libraries:
    llama: Any
    ggml: Any
    shim: Any
    lib_dir: Path


def _load(name: str) -> ctypes.CDLL:
    path = LIB_DIR / name
    if not path.exists():
        raise LibraryNotBuilt(
            f"{path} is missing: ollama-py's native libraries were not built; "
            "reinstall the package (pip install -e .) to build them")
    # RTLD_LOCAL: each library finds its own dependencies breadth-first, so
    # libstdc++ comes before any C++ template copies a CUDA host compiler left
    # exported in libggml-cuda (global loading let those interpose and crash).
    return ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)


_native_log = _NativeLog()


@functools.cache
def libs() -> Libraries:
    """Loads the libraries, initialises the backends and installs the log hook."""
    llama_cdll = _load("libllama.so.0")
    ggml_cdll = _load("libggml.so.0")
    shim_cdll = _load("libollama_py_shim.so")
    loaded = Libraries(
        llama=_Functions(llama_cdll, capi.LLAMA_FUNCTIONS),
        ggml=_Functions(ggml_cdll, capi.GGML_FUNCTIONS),
        shim=_Functions(shim_cdll, capi.SHIM_FUNCTIONS),
        lib_dir=LIB_DIR,
    )
    loaded.llama.llama_log_set(_native_log.callback, None)
    loaded.llama.llama_backend_init()
    log.debug("llama.cpp loaded from %s: %s", LIB_DIR,
              loaded.llama.llama_print_system_info().decode(errors="replace").strip())
    return loaded


def llama() -> Any:
    return libs().llama


def ggml() -> Any:
    return libs().ggml


def shim() -> Any:
    return libs().shim
