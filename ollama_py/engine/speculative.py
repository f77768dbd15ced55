"""Prompt-lookup drafting: speculative decoding with no second model.

An answer that quotes, rewrites or continues text given in its prompt (a
document to summarise, code to edit, a conversation that repeats itself)
keeps producing runs of tokens that appeared earlier in the same sequence.
When the last few tokens occurred before, the tokens that followed them then
are a cheap guess at what follows now. The runner decodes that guess beside
the slot's next token in one batch and checks it, token by token, with the
slot's own sampler: every token it emits is still the one the sampler picks
from the model's logits given the true prefix, so the output is what it would
have been without drafting, only sooner.

That holds only where a row's logits do not depend on how many tokens share
its batch, which depends on the weights' types and the backend. With the
default model (Q4_1) on the CPU with flash attention every verified row
equals the one-token decode bit for bit (measured up to 33 tokens a
sequence, with f16, q8_0 and q4_0 KV caches; past 256 tokens of context an
f16 cache needs the reference kernels the runner decodes generated rows
with, see Context.reference_kernels), and so do Q8_0 and Q4_0 copies of it.
Without flash attention the attention product changes shape
with the batch, and F16 and Q4_K_M weights go through other matrix kernels
for several tokens than for one: rows then differ (by up to 0.05 and 1.8 in
a logit for F16 and Q4_K_M copies of the default model). So the runner
checks this once at load (`batch_invariant`) and drafts only where it
holds.

A draft model named in the Modelfile (engine/draft_model.py) is the other
source of drafts; both answer to `DraftSource`, share `DraftRecord`'s
measure of how long a draft pays, and are verified the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context, DecodeError
from ollama_py.llama.devices import only_cpu
from ollama_py.llama.model import Vocab

# Longest and shortest run of recent tokens looked up; a longer match predicts better and is tried first.
MAX_NGRAM = 4
MIN_NGRAM = 3
# A verified row's arithmetic over the rest of a one-token step, the step's own work that a taken draft
# saves (measured with the default model on the CPU, one thread: about 18 ms of a 31 ms step).
ROW_COST = 1.5
# The record a sequence starts with (four tokens of five taken: drafts of two at first); how much each
# draft's outcome outweighs the record before it (which is weighed by FADE); and how slowly a record too
# poor to draft on returns towards the prior, one step at a time (about five steps without drafts, then
# a draft of one token).
PRIOR_TAKEN = 4.0
PRIOR_REACHED = 5.0
FADE = 0.5
RECOVER = 0.9


# The probe's text, and the prefix it follows without the reference kernels: long enough for the KV view to
# reach 512 cells, past which ggml's CPU flash attention treats a lone row differently (llama/context.py,
# Context.reference_kernels). The reference kernels never take that path, so with them, where only the CPU
# computes, the probe needs no prefix, and a model's load no 260-token prefill.
_PROBE = "The quick brown fox jumps over the lazy dog."
_PROBE_PREFIX = 260


def batch_invariant(ctx: Context, vocab: Vocab, seq: int, rows: int, reference: bool) -> bool:
    """Whether `rows` tokens decoded in one batch get, bit for bit, the logits each gets decoded one at a time,
    both with ggml's reference CPU kernels or not as `reference` says (as the runner decodes generated rows).

    Checked in sequence `seq`, which must be empty and is left empty; after a prefix as long as the context
    allows unless the reference kernels do all the work (they switch only the CPU's). `rows` is the most a
    sequence decodes in a step (its next token and its longest draft), so that every matrix kernel llama.cpp
    picks by the number of rows up to it is compared with the one-row kernel.
    """
    sentence = vocab.tokenize(" " + _PROBE, add_special=False)
    rows = min(rows, ctx.n_batch)  # a step never holds more (llama.cpp aborts past n_batch)
    if rows < 1 or ctx.n_ctx_seq <= rows + 1 or not sentence:
        return False
    start = 0 if reference and only_cpu() else min(_PROBE_PREFIX, ctx.n_ctx_seq - rows - 1)
    text = sentence * ((start + rows) // len(sentence) + 1)
    prefix, tokens = text[:start], text[start:start + rows]
    try:
        with Batch(max(ctx.n_batch, rows), 1) as batch:
            for at in range(0, start, ctx.n_batch):
                batch.clear()
                batch.add_sequence(prefix[at:at + ctx.n_batch], at, seq, last_output=True)
                ctx.decode(batch)
            batch.clear()
            for i, token in enumerate(tokens):
                batch.add(token, start + i, (seq,), True)
            ctx.decode(batch, reference=reference)
            together = [bytes(ctx.logits(i)) for i in range(rows)]
            if not ctx.seq_rm(seq, start):
                return False
            alone = []
            for i, token in enumerate(tokens):
                batch.clear()
                batch.add(token, start + i, (seq,), True)
                ctx.decode(batch, reference=reference)
                alone.append(bytes(ctx.logits(0)))
    except DecodeError:
        return False
    finally:
        ctx.seq_rm(seq)
    return together == alone


def worth(sharing: int) -> float:
    """The chance of being taken from which a drafted token pays, when `sharing` sequences generate in the
    step: a row costs its arithmetic, a saved step saves a row and its share of the step's own work. Alone
    that is 0.6; beside 7 others 0.92, since they already share out the step's work."""
    return ROW_COST * sharing / (ROW_COST * sharing + 1)


class DraftSource(Protocol):
    """What proposes a generating sequence's next tokens: prompt lookup (`Drafter`) or a draft model
    (engine/draft_model.py). The runner verifies either's drafts the same way, row by row with the sequence's
    own sampler, so what it proposes changes only how many steps an answer takes."""

    def draft(self, limit: int, sharing: int = 1) -> list[int]:
        """Up to `limit` tokens guessed to follow the sequence, in a step `sharing` sequences generate in."""
        ...

    def append(self, token: int) -> None:
        """Adds the sequence's next token, once the sampler emitted it."""
        ...

    def feedback(self, drafted: int, taken: int) -> None:
        """Records how much of the last draft the sampler took."""
        ...


class DraftRecord:
    """How much of a sequence's drafts its sampler took, and the draft length that record earns.

    A drafted token costs a row of the verifying batch whether it is taken or
    not, and on a CPU a row costs a good part of a decode step, so a draft is
    only as long as its tokens are likely to be taken. Each draft token is
    reached only when those before it were taken, so the record is a chance
    `p` that a reached token is taken (drafts' tokens taken over tokens
    reached, the older counts fading); the k-th token is reached and taken
    with chance p^k, and drafted while that is at least `worth`. A sequence
    whose drafts keep failing soon drafts nothing; its record drifts back
    towards the prior while it does not draft, so it tries again.
    """

    def __init__(self, max_draft: int) -> None:
        self.max_draft = max_draft
        self._taken = PRIOR_TAKEN
        self._reached = PRIOR_REACHED

    def length(self, sharing: int = 1) -> int:
        """The longest draft whose last token is still taken with a chance that pays, given the record."""
        p = self._taken / self._reached
        least = worth(sharing)
        if p >= 1.0:
            return self.max_draft
        if p <= least:
            return 0
        return min(self.max_draft, int(math.log(least) / math.log(p)))

    def idle(self) -> None:
        """A step without a draft: the record returns a little towards the prior."""
        self._taken = self._taken * RECOVER + PRIOR_TAKEN * (1 - RECOVER)
        self._reached = self._reached * RECOVER + PRIOR_REACHED * (1 - RECOVER)

    def feedback(self, drafted: int, taken: int) -> None:
        if drafted:
            self._taken = self._taken * FADE + taken
            self._reached = self._reached * FADE + taken + (taken < drafted)


class Drafter:
    """One sequence's n-gram index, drafting as far as its record earns.

    The index maps each n-gram to the position after its latest occurrence
    that has a follower, so a lookup costs one dictionary access per n-gram
    size however long the sequence is.
    """

    def __init__(self, tokens: Iterable[int], max_draft: int) -> None:
        self._tokens: list[int] = []
        self._next: list[dict[tuple[int, ...], int]] = [{} for _ in range(MIN_NGRAM, MAX_NGRAM + 1)]
        self.record = DraftRecord(max_draft)
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        """Adds the sequence's next token (each prompt token, then each token the sampler emits)."""
        tokens = self._tokens
        end = len(tokens)
        for n, index in enumerate(self._next, start=MIN_NGRAM):
            if end >= n:
                index[tuple(tokens[end - n:end])] = end
        tokens.append(token)

    def draft(self, limit: int, sharing: int = 1) -> list[int]:
        """Up to `limit` tokens guessed to follow the sequence; empty when its tail never occurred before or
        its record does not make a draft worth verifying in a step `sharing` sequences generate in."""
        limit = min(limit, self.record.length(sharing))
        if limit <= 0:
            self.record.idle()
            return []
        tokens = self._tokens
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if len(tokens) < n:
                continue
            start = self._next[n - MIN_NGRAM].get(tuple(tokens[-n:]))
            if start is not None:
                # An image's placeholder ids (engine/vision.py) are not tokens: a draft ends before them.
                draft = tokens[start:start + limit]
                return next((draft[:k] for k, token in enumerate(draft) if token < 0), draft)
        return []

    def feedback(self, drafted: int, taken: int) -> None:
        """Records how much of the last draft the sampler took."""
        self.record.feedback(drafted, taken)
