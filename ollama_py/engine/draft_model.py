"""Drafts from a second, smaller model that shares the target's vocabulary (the Modelfile's DRAFT, llama-server's
`--model-draft`).

Where prompt lookup guesses only what the prompt already holds, a draft model
guesses any text the target would write, as far as it writes like the target.
It runs greedily, one token a decode, in a context of its own with one sequence
per slot; each slot's sequence keeps what the draft model last saw of it, so
the next draft decodes only the tokens that changed (the target's verified
tokens, a refused draft's tail removed). Its guesses go through the runner's
one verification path (`DraftSource`), so they never change what is emitted.

Every decode of the draft model runs on the runner thread, as the target's do
(engine/runner.py: ggml keeps an OpenMP team per thread that computes). Each
slot drafts in decodes of its own, one after another; the draft length follows
the record of taken drafts (`DraftRecord`), which prices a drafted token by its
row in the target's batch and not by the draft model's own decode, so it suits
a draft model much smaller than its target.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ollama_py.engine.prompt_cache import common_prefix
from ollama_py.engine.speculative import DraftRecord
from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context, ContextOptions, DecodeError
from ollama_py.llama.lib import llama
from ollama_py.llama.model import Model, Vocab
from ollama_py.llama.sampler import SamplerChain, SamplerConfig
from ollama_py.store import vocab_match

log = logging.getLogger(__name__)

# Tokens the draft context decodes in a step while it catches up with a prompt (no drafts until it has).
_BATCH = 512


def vocab_facts(vocab: Vocab) -> vocab_match.VocabFacts:
    """A loaded vocabulary as the compatibility rule reads it, every default resolved by llama.cpp."""
    return vocab_match.VocabFacts(
        type=int(llama().llama_vocab_type(vocab.ptr)), add_bos=vocab.add_bos, bos=vocab.bos,
        add_eos=vocab.add_eos, eos=vocab.eos, texts=[vocab.text(i) for i in range(vocab.n_tokens)])


class DraftModel:
    """The draft model's context, and the tokens each of its sequences holds (one sequence per slot)."""

    def __init__(self, model: Model, target: Model, *, num_ctx: int, num_parallel: int,
                 options: ContextOptions) -> None:
        """`options` are the target's context options; the draft takes its threads, attention and cache types.
        ValueError when the draft's tokens do not mean what the target's do."""
        reason = vocab_match.mismatch(vocab_facts(target.vocab), vocab_facts(model.vocab))
        if reason is not None:
            raise ValueError(f"the draft model {model.path.name} cannot draft for {target.path.name}: {reason}")
        self.model = model
        n_ctx = min(num_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else num_ctx
        batch = min(_BATCH, n_ctx)
        self._ctx = Context(model, ContextOptions(
            n_ctx=n_ctx * num_parallel, n_batch=batch, n_ubatch=batch, n_seq_max=num_parallel,
            n_threads=options.n_threads, n_threads_batch=options.n_threads_batch, flash_attn=options.flash_attn,
            type_k=options.type_k, type_v=options.type_v, kv_unified=False))
        self.num_ctx = min(n_ctx, self._ctx.n_ctx_seq)
        self._held: list[list[int]] = [[] for _ in range(num_parallel)]
        self._batch = Batch(batch, 1)
        self._greedy = SamplerChain(model.vocab, SamplerConfig(temperature=0))
        self._vocab = model.vocab
        self._target_tokens = target.vocab.n_tokens  # a draft's vocabulary may be up to 128 tokens longer

    def drafter(self, seq: int, tokens: Iterable[int], max_draft: int) -> ModelDrafter:
        return ModelDrafter(self, seq, tokens, max_draft)

    def propose(self, seq: int, tokens: list[int], limit: int) -> list[int] | None:
        """Up to `limit` tokens the draft model writes greedily after `tokens` in sequence `seq`: none while it
        is still reading them (a chunk a step, so a long prompt never holds up the other streams), and None
        when it never can (a token beyond its vocabulary, a failed decode)."""
        if limit <= 0 or not tokens or len(tokens) + limit > self.num_ctx:
            return []
        try:
            index = self._catch_up(seq, tokens)
            if index is None:
                return None
            held = self._held[seq]
            drafts: list[int] = []
            while index >= 0:
                token = self._greedy.sample(self._ctx, index, accept=False)
                if token >= self._target_tokens or self._vocab.is_eog(token):
                    return drafts  # the target verifies an end itself, from the row before it
                drafts.append(token)
                if len(drafts) == limit:
                    return drafts
                self._batch.clear()
                index = self._batch.add(token, len(held), (seq,), True)
                self._ctx.decode(self._batch)
                held.append(token)
            return drafts
        except DecodeError as exc:
            log.warning("draft model %s: decode failed, no more drafts for this request: %s",
                        self.model.path.name, exc)
            self._ctx.seq_rm(seq)
            self._held[seq].clear()
            return None

    def _catch_up(self, seq: int, tokens: list[int]) -> int | None:
        """Brings sequence `seq` one chunk closer to holding `tokens`, keeping what it shares with them: the
        logits row of the last token once it holds them all, -1 before; None when a token is not the draft's."""
        held = self._held[seq]
        keep = min(common_prefix(held, tokens), len(tokens) - 1)  # the last is decoded again for its logits
        if not self._ctx.seq_rm(seq, keep, -1):
            self._ctx.seq_rm(seq)
            keep = 0
        del held[keep:]
        chunk = tokens[len(held):len(held) + self._ctx.n_batch]
        if max(chunk) >= self._vocab.n_tokens:
            return None  # the target's vocabulary may be up to 128 tokens longer
        last = len(held) + len(chunk) == len(tokens)
        self._batch.clear()
        index = self._batch.add_sequence(chunk, len(held), seq, last_output=last)
        self._ctx.decode(self._batch)
        held.extend(chunk)
        return index if last else -1

    def close(self) -> None:
        self._greedy.close()
        self._batch.close()
        self._ctx.close()


class ModelDrafter:
    """One generating sequence's drafts from the draft model, as long as its record earns (`DraftRecord`)."""

    def __init__(self, model: DraftModel, seq: int, tokens: Iterable[int], max_draft: int) -> None:
        self._model = model
        self._seq = seq
        self._tokens = list(tokens)
        self.record = DraftRecord(max_draft)

    def append(self, token: int) -> None:
        self._tokens.append(token)

    def draft(self, limit: int, sharing: int = 1) -> list[int]:
        limit = min(limit, self.record.length(sharing))
        if limit <= 0:
            self.record.idle()
            return []
        drafts = self._model.propose(self._seq, self._tokens, limit)
        if drafts is None:
            self.record.max_draft = 0  # this sequence can never be drafted for: stop asking
            return []
        return drafts

    def feedback(self, drafted: int, taken: int) -> None:
        self.record.feedback(drafted, taken)
