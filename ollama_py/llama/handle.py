"""Ownership of one C pointer: freed exactly once, children before parents.

A wrapper that depends on another (a context on its model) names it as its
`parent`. The child's finalizer holds the parent, so garbage collection never
frees the parent first; closing a parent explicitly closes its live children
first, so no child is left pointing at freed memory.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any


class Handle:
    """Base of the owning wrappers in ollama_py.llama."""

    def __init__(self, ptr: int | None, free: Callable[[int], None], *, parent: Handle | None = None,
                 what: str) -> None:
        if not ptr:
            raise ValueError(f"{what}: got a NULL pointer")
        self._ptr: int | None = ptr
        self._what = what
        self._children: weakref.WeakSet[Handle] = weakref.WeakSet()
        if parent is not None:
            parent.ptr  # a closed parent cannot take children
            parent._children.add(self)
        self._finalizer = weakref.finalize(self, _free, free, ptr, parent)

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise RuntimeError(f"{self._what} is closed")
        return self._ptr

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        """Frees the C object (after its children) now; later calls do nothing."""
        for child in list(self._children):
            child.close()
        self._ptr = None
        self._finalizer()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free(free: Callable[[int], None], ptr: int, parent: Handle | None) -> None:
    # `parent` is unused on purpose: holding it keeps the parent alive until
    # this child has been freed.
    del parent
    free(ptr)
