"""Where a loaded model runs, behind one seam: the scheduler is given a RunnerBackend and never names a runner.

Ollama's scheduler holds a runner constructor (`newServerFn`) for the same
reason: the choice of where models run is made once, by whoever builds the
server, and the scheduler's rules (budget, keep-alive, reloads) stay the same
for every choice. Models run in runner processes (`supervisor`), each model
in its own or, split across RPC workers, together; tests may wrap a backend.
This module has what both sides of the seam share.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import msgspec

from ollama_py.engine.chat import ChatEvent
from ollama_py.engine.embed import EmbedResult
from ollama_py.engine.offload import Plan, Sizes, plan, sizes
from ollama_py.engine.placement import Placement
from ollama_py.engine.runner import RunnerOptions, RunnerStats
from ollama_py.llama.devices import devices
from ollama_py.engine.wire import ChatJob
from ollama_py.store import gguf

log = logging.getLogger(__name__)


def gpu_free_memory() -> int:
    """Free memory of the local GPUs as llama.cpp sees them (RPC workers are not local)."""
    return sum(d.memory_free for d in devices() if d.kind in ("gpu", "igpu") and not d.name.startswith("RPC"))


class LoadSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that fixes how a model is loaded; a different spec means a reload."""

    path: Path
    runner: RunnerOptions = RunnerOptions()
    num_gpu: int = -1  # layers on the GPU; -1: as many as fit
    template: str = ""  # a Jinja chat template to use instead of the GGUF's own
    adapters: tuple[Path, ...] = ()  # GGUF LoRA adapters: the same weights with other adapters are another model
    projector: Path | None = None  # a vision projector (mmproj GGUF) loaded with the model
    draft: Path | None = None  # a draft model (GGUF) for speculative decoding, loaded beside the model

    def offload(self, free_vram: int) -> Plan:
        """The GPU layers and memory of this spec, given the GPUs' free memory (Ollama's num_gpu)."""
        opts = self.runner

        def need(path: Path, n_ubatch: int) -> Sizes:
            return sizes(gguf.read(path), num_ctx_total=opts.num_ctx * opts.num_parallel,
                         kv_cache_type=opts.kv_cache_type, n_ubatch=n_ubatch)

        if self.drafting is None:
            return plan(need(self.path, opts.num_batch), free_vram=free_vram, num_gpu=self.num_gpu)
        # The draft model, weights and cache, goes where the model's layers go: all on the GPU when any are.
        draft = need(self.drafting, 512).total
        placed = plan(need(self.path, opts.num_batch), free_vram=max(0, free_vram - draft), num_gpu=self.num_gpu)
        return replace(placed, size=placed.size + draft,
                       size_vram=placed.size_vram + (draft if placed.gpu_layers else 0))

    @property
    def drafting(self) -> Path | None:
        """The draft model the runner loads: none while drafting is off (OLLAMA_PY_DRAFT_MAX=0)."""
        return self.draft if self.runner.draft_max > 0 else None


class ModelRunner(Protocol):
    """A loaded model as the server uses it: every call goes to where the model runs."""

    num_ctx: int  # per slot, as llama.cpp granted it
    n_vocab: int

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    def chat(self, job: ChatJob) -> AsyncIterator[ChatEvent]: ...

    async def embed(self, inputs: list[str], *, truncate: bool = True,
                    dimensions: int | None = None) -> EmbedResult: ...

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]: ...

    async def detokenize(self, tokens: list[int]) -> str: ...

    def stats(self) -> RunnerStats: ...

    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Opened:
    """A model a backend has loaded, and what the scheduler keeps of it; the scheduler closes the runner."""

    runner: ModelRunner
    placement: tuple[Placement, ...] = ()  # where the layers live; empty where llama.cpp's choice is not known
    offload: Plan | None = None  # layers and memory on the local GPUs; None where the model is not placed here
    size: int = 0  # bytes the model takes, as /api/ps reports it


class RunnerBackend(Protocol):
    """Loads models and starts their runners, wherever they run."""

    @property
    def failures(self) -> int:
        """Runners that died or were stopped since the server started (for /metrics)."""
        ...

    def open(self, spec: LoadSpec) -> Opened:
        """Loads the model as `spec` says and starts its runner.

        Blocking and slow: the scheduler calls it in a worker thread, never holding its lock.
        """
        ...

    def close(self) -> None:
        """Frees what the backend holds beyond its models (runner processes). Blocking."""
        ...
