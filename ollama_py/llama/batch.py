"""A reusable llama_batch: the tokens of one llama_decode call."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from ollama_py.llama import capi
from ollama_py.llama.handle import Handle
from ollama_py.llama.lib import llama


class Batch(Handle):
    """Holds up to `capacity` tokens, each in up to `n_seq_max` sequences."""

    def __init__(self, capacity: int, n_seq_max: int = 1) -> None:
        if capacity < 1 or n_seq_max < 1:
            raise ValueError("a batch needs room for at least one token and one sequence")
        self._c = llama().llama_batch_init(capacity, 0, n_seq_max)
        # The struct is passed by value, so it is both the handle and the data.
        super().__init__(ctypes.addressof(self._c), lambda _p, c=self._c: llama().llama_batch_free(c),
                         what="batch")
        self.capacity = capacity
        self.n_seq_max = n_seq_max
        self._c.n_tokens = 0

    def __len__(self) -> int:
        return int(self._c.n_tokens)

    @property
    def c(self) -> capi.llama_batch:
        self.ptr  # raises once closed
        return self._c

    def clear(self) -> None:
        self._c.n_tokens = 0

    def add(self, token: int, pos: int, seq_ids: Iterable[int], output: bool) -> int:
        """Appends one token; returns its index, which names its logits row."""
        i = int(self._c.n_tokens)
        if i >= self.capacity:
            raise OverflowError(f"batch is full ({self.capacity} tokens)")
        c = self.c
        c.token[i] = token
        c.pos[i] = pos
        n = 0
        for n, seq in enumerate(seq_ids, start=1):
            if n > self.n_seq_max:
                raise ValueError(f"a token can be in at most {self.n_seq_max} sequences")
            c.seq_id[i][n - 1] = seq
        c.n_seq_id[i] = n
        c.logits[i] = 1 if output else 0
        c.n_tokens = i + 1
        return i

    def add_sequence(self, tokens: list[int], start_pos: int, seq_id: int, *, last_output: bool = True) -> int:
        """Appends a run of one sequence's tokens; returns the last one's index."""
        if len(self) + len(tokens) > self.capacity:
            raise OverflowError(f"{len(tokens)} tokens do not fit the batch ({self.capacity - len(self)} free)")
        index = -1
        for k, token in enumerate(tokens):
            index = self.add(token, start_pos + k, (seq_id,), last_output and k == len(tokens) - 1)
        return index
