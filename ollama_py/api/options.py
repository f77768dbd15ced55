"""Ollama's `options` (and Modelfile PARAMETERs): load-time options apart from sampling options.

Every field is None when not given, as Go's `FromMap` skips nulls, so a
request's options can be laid over a Modelfile's, and those over the defaults,
by taking the fields that are set. Unknown keys are skipped (the handler logs
them); options Ollama has dropped are still accepted and ignored, so old
clients keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

import msgspec
from msgspec import Meta

Duration = str | int | float
"""keep_alive: a Go duration ("5m", "1h30m", "-1") or a number of seconds; negative is forever, 0 unloads."""

Think = bool | Literal["low", "medium", "high", "max"]
"""`think`: on/off, or a level for models that take one (we treat any level as on)."""

Format = str | dict[str, Any]
"""`format`: "json" for any JSON object, or a JSON schema the answer must satisfy."""

class LoadOptions(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Options fixed when a model is loaded; a request that changes one reloads the model."""

    num_ctx: Annotated[int, Meta(ge=1)] | None = None  # tokens per sequence (slot)
    num_batch: Annotated[int, Meta(ge=1)] | None = None
    num_gpu: int | None = None  # layers offloaded; -1 as many as fit, 0 CPU only
    main_gpu: Annotated[int, Meta(ge=0)] | None = None
    use_mmap: bool | None = None
    num_thread: Annotated[int, Meta(ge=0)] | None = None  # 0: every core
    # Deprecated: accepted and ignored, as Ollama does.
    numa: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mlock: bool | None = None

    def over(self, base: Self) -> Self:
        """These options laid over `base`: fields set here win."""
        changes = {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}
        return msgspec.structs.replace(base, **changes)


class Options(LoadOptions, kw_only=True, omit_defaults=True):
    """Everything `options` may hold; see `LoadOptions` for the load-time part."""

    num_keep: Annotated[int, Meta(ge=-1)] | None = None  # prompt tokens kept when a long prompt is cut
    seed: int | None = None  # negative: a fresh random seed per request
    num_predict: Annotated[int, Meta(ge=-2)] | None = None  # -1 until a stop, -2 until the context is full
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_last_n: Annotated[int, Meta(ge=-1)] | None = None  # -1: the whole context
    temperature: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | None = None
    # Deprecated: accepted and ignored, as Ollama does.
    tfs_z: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    penalize_newline: bool | None = None

    def load_part(self) -> LoadOptions:
        return LoadOptions(**{f: getattr(self, f) for f in LoadOptions.__struct_fields__})


def from_parameters(parameters: dict[str, Any]) -> Options:
    """A Modelfile's stored PARAMETERs as options; the store already checked their names and types."""
    return msgspec.convert(parameters, Options)
