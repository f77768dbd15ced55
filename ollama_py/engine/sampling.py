"""Ollama's sampling options as a llama.cpp sampler chain configuration."""

from __future__ import annotations

from ollama_py.engine.types import Sampling
from ollama_py.llama import capi
from ollama_py.llama.sampler import Grammar, SamplerConfig


def sampler_config(sampling: Sampling, grammar: Grammar | None = None) -> SamplerConfig:
    """The chain Ollama's runner builds for these options.

    temperature 0 means greedy (the chain still applies penalties and the
    grammar first); a negative seed means a fresh random seed per request.
    """
    return SamplerConfig(
        temperature=max(sampling.temperature, 0.0),
        top_k=max(sampling.top_k, 0),
        top_p=sampling.top_p if 0.0 < sampling.top_p <= 1.0 else 1.0,
        min_p=min(max(sampling.min_p, 0.0), 1.0),
        typical_p=sampling.typical_p if 0.0 < sampling.typical_p <= 1.0 else 1.0,
        repeat_last_n=sampling.repeat_last_n,
        repeat_penalty=sampling.repeat_penalty if sampling.repeat_penalty > 0 else 1.0,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        seed=sampling.seed if sampling.seed >= 0 else capi.LLAMA_DEFAULT_SEED,
        grammar=grammar,
    )


class ReasoningGate:
    """Holds a format's grammar back while a thinking model reasons, as Ollama lets a model finish its
    thoughts before constraining the answer.

    Tokens are sampled freely until the answer starts: the closing tag ends the reasoning (the grammar
    takes the token after it), and a first token that does not open any reasoning is the answer's first,
    sampled again under the grammar from the same logits.
    """

    def __init__(self, opening: str, closing: str, *, opened: bool) -> None:
        self._opening = opening
        self._closing = closing
        self._thinking = opened
        self._tail = ""  # what may still grow into the opening (before) or closing (inside) tag
        self.done = False
        # Characters after the closing tag in the token that closed the reasoning, when they are more than
        # whitespace: the answer's start, sampled without the grammar. The runner drops them from the text, as
        # Ollama drops what a thinking model wrote before the format applied.
        self.stray = 0

    def admit(self, piece: str) -> bool:
        """Whether a freely sampled token stands; False when it starts the answer (sample it again under the
        grammar). After the token that closes the reasoning, `done` is set."""
        text = self._tail + piece
        if not self._thinking:
            stripped = text.lstrip()
            if not stripped or self._opening.startswith(stripped):
                self._tail = text
                return True
            if not stripped.startswith(self._opening):
                self.done = True
                return False
            self._thinking = True
            text = stripped[len(self._opening):]
        if self._closing in text:
            self.done = True
            after = text[text.index(self._closing) + len(self._closing):]
            self.stray = len(after) if after.strip() else 0
            self._tail = ""
        else:
            self._tail = text[-len(self._closing):]
        return True


# Above this temperature a sampled answer strays from the text it could quote too often for drafts to pay.
_DRAFT_MAX_TEMPERATURE = 0.5


def worth_drafting(sampling: Sampling) -> bool:
    """Whether prompt-lookup drafts are likely enough to be taken that verifying them pays.

    Drafting never changes what is sampled (each row is sampled as it would have been one step at a time),
    only what it costs: greedy and low-temperature answers follow their source text closely.
    """
    return sampling.temperature <= _DRAFT_MAX_TEMPERATURE or sampling.top_k == 1

