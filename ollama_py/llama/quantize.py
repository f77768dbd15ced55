"""Quantizing a GGUF with llama.cpp's own quantizer, in a child process.

`llama_model_quantize` is CPU-heavy, runs for seconds to minutes and, given a
file it dislikes, may abort the process it runs in. So it never runs in the
server: `quantize` starts `python -m ollama_py.llama.quantize`, which reports
each tensor it finishes as a JSON line on stdout, and the parent turns those
into progress, kills the child when the caller cancels, and turns a crash
into an error that names its cause.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# The llama_ftype of each type Ollama's create offers, by the name users write (matched case-insensitively).
FILE_TYPES: dict[str, int] = {
    "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
    "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
}
# The sources llama.cpp quantizes without loss piling on loss: unquantized weights.
SOURCE_TYPES = ("F32", "F16", "BF16")

_TENSOR_DONE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")
_STDERR_TAIL = 2000


class QuantizeError(RuntimeError):
    """llama.cpp refused the file or the quantizer process failed; the message says how."""


class Cancelled(QuantizeError):
    """The caller cancelled; the child was stopped and its output removed."""


def file_type(name: str) -> int:
    """The llama_ftype for a type name such as q4_K_M; ValueError in Ollama's words for an unknown one."""
    ftype = FILE_TYPES.get(name.upper())
    if ftype is None:
        raise ValueError(f"unsupported quantization type {name}")
    return ftype


def quantize(source: Path, out: Path, ftype: int, *, progress: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None, threads: int = 0) -> None:
    """Writes `source` quantized to `ftype` at `out`; `progress(done, total)` counts tensors.

    Blocking: call it from a worker thread. `out` is removed when this fails.
    """
    cmd = [sys.executable, "-m", __name__, str(source), str(out), str(ftype), str(threads)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    stderr: list[bytes] = []
    drain = threading.Thread(target=lambda: stderr.append(child.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    watcher = None
    if cancel is not None:
        watcher = threading.Thread(target=_kill_on_cancel, args=(child, cancel), daemon=True)
        watcher.start()
    try:
        assert child.stdout is not None
        for line in child.stdout:
            done, total = json.loads(line)
            if progress is not None:
                progress(done, total)
        code = child.wait()
        drain.join()
    except BaseException:
        child.kill()
        child.wait()
        out.unlink(missing_ok=True)
        raise
    if cancel is not None and cancel.is_set():
        out.unlink(missing_ok=True)
        raise Cancelled("quantizing was cancelled")
    if code != 0:
        out.unlink(missing_ok=True)
        tail = b"".join(stderr).decode("utf-8", errors="replace").strip()[-_STDERR_TAIL:]
        how = f"exit status {code}" if code > 0 else f"signal {-code}"
        raise QuantizeError(f"llama.cpp could not quantize {source.name} ({how}): {tail or 'no message'}")


def _kill_on_cancel(child: subprocess.Popen[bytes], cancel: threading.Event) -> None:
    while child.poll() is None:
        if cancel.wait(0.2):
            child.kill()
            return


class _TensorCounter(logging.Handler):
    """Turns the quantizer's `[  12/ 272] blk.0...` log lines into `[12, 272]` lines on stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        m = _TENSOR_DONE.match(record.getMessage())
        if m:
            sys.stdout.write(json.dumps([int(m.group(1)), int(m.group(2))]) + "\n")
            sys.stdout.flush()


def _child(argv: list[str]) -> int:
    from ollama_py.llama.lib import llama, native_log

    source, out, ftype, threads = argv
    native_log.addHandler(_TensorCounter())
    native_log.setLevel(logging.INFO)
    native_log.propagate = False
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.WARNING)
    native_log.addHandler(errors)
    lib = llama()
    params = lib.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads) or (os.cpu_count() or 1)
    code = lib.llama_model_quantize(source.encode(), out.encode(), params)
    if code != 0:
        sys.stderr.write(f"llama_model_quantize returned {code}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
