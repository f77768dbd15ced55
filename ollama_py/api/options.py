"""Ollama's `options` (and Modelfile PARAMETERs): load-time options apart from sampling options.

Every field is None when not given, as Go's `FromMap` skips nulls, so a
request's options can be laid over a Modelfile's, and those over the defaults,
by taking the fields that are set. Unknown keys are skipped (the handler logs
them); options Ollama has dropped are still accepted and ignored, so old
clients keep working.

Values are held to what their C types take, as Go's conversions and Ollama's
runner would leave them (llama.cpp takes int32 and float; the seed is a
uint32): integers are clamped into int32, a seed wraps into uint32 as Go's
`uint32(seed)` does, a negative `num_predict` means no limit, `num_ctx` is at
least 4 (Ollama's scheduler raises it so), and floats stay finite within
float32's range. What depends on the server (`num_ctx` above its limit,
`repeat_last_n` beyond the context) is bounded when the request is planned
(server/models.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Self, get_args, get_origin

import msgspec
from msgspec import Meta

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
MIN_NUM_CTX = 4  # Ollama's scheduler raises a smaller num_ctx to this

Duration = str | int | float
"""keep_alive: a Go duration ("5m", "1h30m", "-1") or a number of seconds; negative is forever, 0 unloads."""

ThinkLevel = Literal["low", "medium", "high", "max"]
Think = bool | ThinkLevel
"""`think`: on/off, or a level for models that take one (api.ThinkValue: any other string is refused)."""



def think_setting(think: Think | None) -> tuple[bool | None, str]:
    """`think` as a switch (None: the template's default) and the level asked for ("" when none was)."""
    if think is None or isinstance(think, bool):
        return think, ""
    return True, think


# OpenAI's reasoning efforts on Ollama's scale (openai.go thinkFromReasoningEffort): past either end of it
# ("minimal", "xhigh", and "ultra" that clients add), the nearest level rather than a refusal.
_EFFORTS: dict[str, Think] = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                              "max": "max", "xhigh": "max", "ultra": "max"}
REASONING_EFFORTS = tuple(_EFFORTS)


def think_from_effort(effort: str | None) -> Think | None:
    """An OpenAI reasoning effort as Ollama's `think`; None or "" leaves it to the template.

    Raises ValueError for an effort Ollama refuses.
    """
    if not effort:
        return None
    if effort not in _EFFORTS:
        raise ValueError(f"invalid reasoning value {effort!r} (must be one of {', '.join(REASONING_EFFORTS)})")
    return _EFFORTS[effort]


Format = str | dict[str, Any]
"""`format`: "json" for any JSON object, or a JSON schema the answer must satisfy."""

class LoadOptions(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Options fixed when a model is loaded; a request that changes one reloads the model."""

    num_ctx: int | None = None  # tokens per sequence (slot); at least MIN_NUM_CTX
    num_batch: Annotated[int, Meta(ge=1)] | None = None
    num_gpu: int | None = None  # layers offloaded; -1 (or any negative) as many as fit, 0 CPU only
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

    # Fields whose values reach C as integers and as floats; filled in below, per class.
    _ints: ClassVar[frozenset[str]] = frozenset()
    _floats: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for name in self._ints:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, self._bounded_int(name, value))
        for name in self._floats:
            value = getattr(self, name)
            if value is None:
                continue
            if not math.isfinite(value):
                raise ValueError(f"{name}: {value} is not a finite number")
            setattr(self, name, max(-FLOAT32_MAX, min(float(value), FLOAT32_MAX)))

    @staticmethod
    def _bounded_int(name: str, value: int) -> int:
        if name == "seed":
            return value if value < 0 else value % 2**32  # Go's uint32(seed); negative: a fresh random seed
        if name == "num_predict" and value < -2:
            return -1  # any negative is "no limit" to Ollama's runner
        if name in ("num_gpu", "num_keep") and value < -1:
            return -1
        if name == "num_ctx":
            value = max(value, MIN_NUM_CTX)
        return max(INT32_MIN, min(value, INT32_MAX))

    def over(self, base: Self) -> Self:
        """These options laid over `base`: fields set here win."""
        changes = {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}
        return msgspec.structs.replace(base, **changes)


class Options(LoadOptions, kw_only=True, omit_defaults=True):
    """Everything `options` may hold; see `LoadOptions` for the load-time part."""

    num_keep: int | None = None  # prompt tokens kept when a long prompt is cut; -1 (or any negative) all
    seed: int | None = None  # negative: a fresh random seed per request
    num_predict: int | None = None  # -1 (or any negative) until a stop, -2 until the context is full
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_last_n: Annotated[int, Meta(ge=-1)] | None = None  # -1: the whole context; at most the context
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


def _numeric_fields(cls: type[LoadOptions]) -> None:
    for field in msgspec.structs.fields(cls):
        members = {get_args(m)[0] if get_origin(m) is Annotated else m
                   for m in (get_args(field.type) or (field.type,))}
        if int in members:
            cls._ints |= {field.name}
        elif float in members:
            cls._floats |= {field.name}


for _cls in (LoadOptions, Options):
    _numeric_fields(_cls)


def from_parameters(parameters: dict[str, Any]) -> Options:
    """A Modelfile's stored PARAMETERs as options; the store already checked their names and types."""
    return msgspec.convert(parameters, Options)
