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
