"""Quantize on create: unquantized weights in, llama.cpp's quantizer (in a child process), a checked GGUF out.

As Ollama does: the type is named as users write it (`q4_K_M`), progress is
`quantizing F16 model to Q4_K_M` with a byte count, a source already quantized
is refused with Ollama's message, and weights already of the asked type are
kept as they are. The result is read back before it may become a blob: it must
be a sound GGUF of the type asked for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ollama_py.api.native import ProgressUpdate
from ollama_py.llama import quantize as llama_quantize
from ollama_py.store import gguf

log = logging.getLogger(__name__)

# Ollama's progress for a quantization carries this stand-in digest, so that clients draw one bar for it.
PROGRESS_DIGEST = "0000000000000000000"


class QuantizeRefused(ValueError):
    """A quantization that cannot be done: an unknown type, weights already quantized, a file llama.cpp refuses."""


def quantized(weights: Path, type_name: str, scratch: Path, *, progress: Callable[[ProgressUpdate], None] | None,
              cancel: threading.Event | None) -> Path | None:
    """`weights` quantized to `type_name` in `scratch`; None when they already are of that type."""
    want = type_name.upper()
    try:
        ftype = llama_quantize.file_type(want)
    except ValueError as exc:
        raise QuantizeRefused(str(exc)) from None
    have = gguf.read(weights).file_type
    if have == want:
        return None
    if have not in llama_quantize.SOURCE_TYPES:
        # Ollama's words; BF16 is quantized too (Ollama's list stops at F16 and F32).
        raise QuantizeRefused("quantization is only supported for F16 and F32 models")
    status = f"quantizing {have} model to {want}"
    size = weights.stat().st_size

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(ProgressUpdate(status=status, digest=PROGRESS_DIGEST, total=size,
                                    completed=size * done // max(total, 1)))

    report(0, 1)
    out = scratch / f"{want}.gguf"
    log.info("quantizing %s (%s) to %s", weights.name, have, want)
    try:
        llama_quantize.quantize(weights, out, ftype, progress=report, cancel=cancel)
    except llama_quantize.Cancelled:
        raise
    except llama_quantize.QuantizeError as exc:
        raise QuantizeRefused(str(exc)) from None
    try:
        got = gguf.read(out).file_type
    except gguf.GGUFError as exc:
        raise QuantizeRefused(f"the quantized model does not read back: {exc}") from None
    if got != want:
        raise QuantizeRefused(f"llama.cpp wrote a {got} model where {want} was asked for")
    return out
