"""Plain data crossing the engine boundary: what a request asks, what comes back.

Everything here is frozen so a request handed to the runner thread cannot be
changed under it by the asyncio side.
"""

from __future__ import annotations

import enum

import msgspec

from ollama_py.engine.vision import PromptImages
from ollama_py.llama.sampler import Grammar


class DoneReason(enum.Enum):
    """Why a generation ended; `str()` is the word Ollama puts in `done_reason`."""

    STOP = "stop"
    LENGTH = "length"

    def __str__(self) -> str:
        return self.value


class EngineError(Exception):
    """The runner could not serve a request it had accepted (decode failed, runner stopped)."""


class PromptTooLong(ValueError):
    """The prompt does not fit the context and truncation was not allowed (a 400 for the API)."""

    @classmethod
    def check(cls, tokens: int, num_ctx: int) -> None:
        """Refuses, in Ollama's words, a prompt longer than the context; one that exactly fills it may run."""
        if tokens > num_ctx:
            raise cls(f"the input length exceeds the context length ({tokens} tokens, context {num_ctx})")


class Sampling(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Ollama's sampling options with Ollama's defaults (api/types.go DefaultOptions).

    repeat_penalty is 1.0, current Ollama's default (older releases used 1.1):
    a penalty on the tokens of the prompt keeps a small model from repeating a
    tool call it was shown.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    num_predict: int = -1  # negative: until a stop or the context end
    num_keep: int = 4  # tokens kept at the start when a long prompt is truncated or the context shifted
    stop: tuple[str, ...] = ()


class GenerationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt, already tokenized, and how to sample its continuation."""

    id: str
    prompt: tuple[int, ...]
    sampling: Sampling = Sampling()
    grammar: Grammar | None = None
    # Tokens the grammar must consume before the first sample: a chat
    # template's grammar starts with the generation prompt that is already
    # in the prompt (llama.cpp's common_sampler prefills it the same way).
    grammar_prefill: tuple[int, ...] = ()
    truncate: bool = True
    shift: bool = True  # at the context's end, drop the oldest half after num_keep and go on (Ollama's shift)
    logprobs: bool = False
    top_logprobs: int = 0
    # Special tokens printed as text rather than dropped: the markers a chat
    # format's parser needs to see (llama.cpp's "preserved tokens").
    special_tokens: frozenset[int] = frozenset()
    # A thinking model's (opening, closing) reasoning tags: the grammar waits until the reasoning has
    # ended; `reasoning_opened` when the prompt itself ends inside the opening tag.
    reasoning_tags: tuple[str, str] | None = None
    reasoning_opened: bool = False
    # The images in `prompt`, each a run of placeholder ids (engine/vision.py); None for a text-only prompt.
    images: PromptImages | None = None


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    logprob: float
    bytes: tuple[int, ...]


class Logprob(msgspec.Struct, frozen=True, kw_only=True):
    """The chosen token's log-probability under the model, and the most likely alternatives."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top_logprobs: tuple[TokenLogprob, ...] = ()


class Token(msgspec.Struct, frozen=True, kw_only=True):
    """Text produced by one step; `text` may be empty while a stop string is still undecided."""

    text: str
    token: int
    logprob: Logprob | None = None


class Done(msgspec.Struct, frozen=True, kw_only=True):
    """The last event of a generation, with Ollama's counters (durations in nanoseconds)."""

    reason: DoneReason
    text: str = ""  # held-back text released at the end (a partial stop string that never completed)
    prompt_eval_count: int = 0  # prompt tokens actually evaluated (cached ones are not)
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    total_duration: int = 0
    prompt_tokens: int = 0  # the whole prompt after truncation, cached or not
    prompt_cached: int = 0  # prompt tokens not evaluated: kept in the slot or restored from a saved state
    truncated: bool = False
    stop_sequence: str = ""  # the stop string that ended the answer (Anthropic's API reports it)


class RunnerCrashed(EngineError):
    """The runner process died (or its watchdog stopped it) while it loaded a model: the model's files or
    template make llama.cpp fail, and loading it again would fail again."""


class InvalidRequest(ValueError):
    """The request asked for what the model refuses once it sees it (a grammar llama.cpp rejects): a 400."""


class Failed(msgspec.Struct, frozen=True, kw_only=True):
    """The runner gave up on this request; `submit` raises it as InvalidRequest or EngineError."""

    message: str
    invalid: bool = False  # the request's fault, not ours


Event = Token | Done
