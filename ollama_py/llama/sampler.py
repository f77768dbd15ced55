"""Sampler chains in C: one per generating sequence, since a chain keeps state
(penalty history, grammar position, RNG).

The grammar is kept out of the chain, as llama-server's common_sampler keeps
it: the chain samples freely, the grammar checks only the chosen token, and
only a rejected token costs a pass of the grammar over the whole vocabulary.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from ollama_py.llama import capi
from ollama_py.llama.context import Context
from ollama_py.llama.handle import Handle
from ollama_py.llama.lib import LlamaError, llama, shim
from ollama_py.llama.model import Vocab


class GrammarError(LlamaError):
    """llama.cpp could not parse a GBNF grammar."""


@dataclass(frozen=True, kw_only=True)
class Grammar:
    gbnf: str
    root: str = "root"
    # Lazy grammars (tool calls) only constrain output after a trigger.
    lazy: bool = False
    trigger_patterns: tuple[str, ...] = ()
    trigger_tokens: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """Every sampler Ollama's options map to. Defaults leave a sampler out."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = capi.LLAMA_DEFAULT_SEED
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: Grammar | None = None


def _add(chain: int, sampler: int | None, what: str) -> None:
    if not sampler:
        raise LlamaError(f"could not create the {what} sampler")
    llama().llama_sampler_chain_add(chain, sampler)


class _GrammarSampler(Handle):
    """The grammar beside a chain; the chain's closing frees it first."""


class SamplerChain(Handle):
    """A llama_sampler chain (which owns every sampler added to it) and the grammar beside it."""

    def __init__(self, vocab: Vocab, config: SamplerConfig) -> None:
        lib = llama()
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = False
        chain = lib.llama_sampler_chain_init(params)
        super().__init__(chain, lib.llama_sampler_free, parent=vocab.model, what="sampler chain")
        self.config = config
        self._grammar: _GrammarSampler | None = None
        try:
            if config.grammar is not None:
                self._grammar = _GrammarSampler(_grammar(vocab, config.grammar), lib.llama_sampler_free,
                                                parent=self, what="grammar sampler")
            self._build(vocab, config)
        except BaseException:
            self.close()
            raise

    def _build(self, vocab: Vocab, c: SamplerConfig) -> None:
        lib = llama()
        chain = self.ptr
        seed = c.seed & 0xFFFFFFFF if c.seed >= 0 else capi.LLAMA_DEFAULT_SEED
        if c.logit_bias:
            biases = (capi.llama_logit_bias * len(c.logit_bias))(
                *(capi.llama_logit_bias(tok, bias) for tok, bias in c.logit_bias.items()))
            _add(chain, lib.llama_sampler_init_logit_bias(vocab.n_tokens, len(c.logit_bias), biases), "logit bias")
        if c.repeat_last_n != 0 and (c.repeat_penalty != 1.0 or c.frequency_penalty or c.presence_penalty):
            last_n = vocab.n_tokens if c.repeat_last_n < 0 else c.repeat_last_n
            _add(chain, lib.llama_sampler_init_penalties(
                vocab.n_tokens, last_n, c.repeat_penalty, c.frequency_penalty, c.presence_penalty), "penalties")
        if c.temperature <= 0:
            _add(chain, lib.llama_sampler_init_greedy(), "greedy")
            return
        if c.mirostat == 1:
            _add(chain, lib.llama_sampler_init_temp(c.temperature), "temperature")
            _add(chain, lib.llama_sampler_init_mirostat(vocab.n_tokens, seed, c.mirostat_tau, c.mirostat_eta, 100),
                 "mirostat")
            return
        if c.mirostat == 2:
            _add(chain, lib.llama_sampler_init_temp(c.temperature), "temperature")
            _add(chain, lib.llama_sampler_init_mirostat_v2(seed, c.mirostat_tau, c.mirostat_eta), "mirostat v2")
            return
        if c.top_k > 0:
            _add(chain, lib.llama_sampler_init_top_k(c.top_k), "top_k")
        if c.typical_p < 1.0:
            _add(chain, lib.llama_sampler_init_typical(c.typical_p, 1), "typical_p")
        if c.top_p < 1.0:
            _add(chain, lib.llama_sampler_init_top_p(c.top_p, 1), "top_p")
        if c.min_p > 0.0:
            _add(chain, lib.llama_sampler_init_min_p(c.min_p, 1), "min_p")
        _add(chain, lib.llama_sampler_init_temp(c.temperature), "temperature")
        _add(chain, lib.llama_sampler_init_dist(seed), "dist")

    @property
    def has_grammar(self) -> bool:
        return self._grammar is not None

    def sample(self, ctx: Context, index: int, *, constrained: bool = True, accept: bool = True) -> int:
        """Samples from batch index `index`, under the grammar unless `constrained` is False, and accepts
        the token into the chain (and the grammar, when it applied) unless `accept` is False."""
        grammar = self._grammar.ptr if self._grammar is not None and constrained else None
        token = int(shim().ollama_py_sample(self.ptr, grammar, ctx.ptr, index))
        if token < 0:
            raise LlamaError(f"nothing sampled from batch index {index} (no logits, or no sampler selected)")
        if accept:
            self.accept_sampled(token, constrained=constrained)
        return token

    def accept_sampled(self, token: int, *, constrained: bool = True) -> None:
        """Takes a sampled token into the chain's state, and the grammar's when it applied."""
        lib = llama()
        if constrained and self._grammar is not None:
            lib.llama_sampler_accept(self._grammar.ptr, token)
        lib.llama_sampler_accept(self.ptr, token)

    def accept(self, token: int) -> None:
        """Feeds a token the chain did not pick (a prompt token) into its history; the grammar never sees it."""
        llama().llama_sampler_accept(self.ptr, token)

    def accept_grammar(self, token: int) -> None:
        """Feeds a token the grammar has already matched (a generation prompt the template wrote)."""
        if self._grammar is not None:
            llama().llama_sampler_accept(self._grammar.ptr, token)

    def reset(self) -> None:
        llama().llama_sampler_reset(self.ptr)
        if self._grammar is not None:
            llama().llama_sampler_reset(self._grammar.ptr)

    def names(self) -> list[str]:
        lib = llama()
        return [lib.llama_sampler_name(lib.llama_sampler_chain_get(self.ptr, i)).decode()
                for i in range(lib.llama_sampler_chain_n(self.ptr))]

    def perf(self) -> capi.llama_perf_sampler_data:
        return llama().llama_perf_sampler(self.ptr)


def _grammar(vocab: Vocab, g: Grammar) -> int:
    lib = llama()
    if g.lazy:
        patterns = (ctypes.c_char_p * max(1, len(g.trigger_patterns)))(
            *(p.encode() for p in g.trigger_patterns))
        tokens = (capi.llama_token * max(1, len(g.trigger_tokens)))(*g.trigger_tokens)
        ptr = lib.llama_sampler_init_grammar_lazy_patterns(
            vocab.ptr, g.gbnf.encode(), g.root.encode(), patterns, len(g.trigger_patterns),
            tokens, len(g.trigger_tokens))
    else:
        ptr = lib.llama_sampler_init_grammar(vocab.ptr, g.gbnf.encode(), g.root.encode())
    if not ptr:
        raise GrammarError("llama.cpp rejected the grammar (see the log for the parse error)")
    return int(ptr)
