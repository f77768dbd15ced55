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
its batch. On the CPU with flash attention they do not (measured on the
default model: every verified row equal to the single-token decode, bit for
bit, up to 33 tokens a sequence); without flash attention the attention
product changes shape with the batch and rows differ, so the runner drafts
only with flash attention on.
"""

from __future__ import annotations

from collections.abc import Iterable

# Longest and shortest run of recent tokens looked up; a longer match predicts better and is tried first.
MAX_NGRAM = 4
MIN_NGRAM = 2


class Drafter:
    """One sequence's n-gram index and the draft length it earns.

    The index maps each n-gram to the position after its latest occurrence
    that has a follower, so a lookup costs one dictionary access per n-gram
    size however long the sequence is. The draft length halves when a draft's
    first token is wrong and doubles back to `max_draft` when a whole draft is
    taken: text that stops repeating soon costs little wasted compute.
    """

    def __init__(self, tokens: Iterable[int], max_draft: int) -> None:
        self._tokens: list[int] = []
        self._next: list[dict[tuple[int, ...], int]] = [{} for _ in range(MIN_NGRAM, MAX_NGRAM + 1)]
        self.max_draft = max_draft
        self._length = max_draft
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

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens guessed to follow the sequence; empty when its tail never occurred before."""
        limit = min(limit, self._length)
        tokens = self._tokens
        if limit <= 0:
            return []
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if len(tokens) < n:
                continue
            start = self._next[n - MIN_NGRAM].get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start:start + limit]
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        """Adapts the draft length to how much of the last draft the sampler took."""
        if drafted == 0:
            return
        if accepted == 0:
            self._length = max(1, self._length // 2)
        elif accepted == drafted:
            self._length = min(self.max_draft, self._length * 2)
