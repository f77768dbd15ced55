"""Embeddings, as Ollama's /api/embed gives them: pooled, L2-normalised, truncated on request.

Embedding needs a context built for it (embeddings on, whole inputs in one
ubatch), so it does not share the generation runner's context.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from ollama_py.engine.types import EngineError, PromptTooLong
from ollama_py.llama import capi
from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context, ContextOptions
from ollama_py.llama.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedResult:
    embeddings: list[list[float]]
    prompt_eval_count: int  # tokens embedded, over all inputs
    total_duration: int  # nanoseconds


class Embedder:
    """One model's embedding context; calls are serialised, so run them off the event loop."""

    def __init__(self, model: Model, *, num_ctx: int = 2048, max_inputs: int = 8, num_thread: int = 0) -> None:
        self.model = model
        self.num_ctx = min(num_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else num_ctx
        self._max_inputs = max_inputs

        def context(pooling: int) -> Context:
            # A non-causal model must see a whole input in one ubatch, so ubatch = batch = context.
            # Inputs share the context, packed up to num_ctx tokens per decode.
            return Context(model, ContextOptions(
                n_ctx=self.num_ctx, n_batch=self.num_ctx, n_ubatch=self.num_ctx, n_seq_max=max_inputs,
                n_threads=num_thread,
                n_threads_batch=num_thread, embeddings=True, pooling=pooling, kv_unified=True))

        self._ctx = context(capi.POOLING_UNSPECIFIED)
        if self._ctx.pooling == capi.POOLING_NONE:
            # A generative model names no pooling; llama-server would return one
            # vector per token, Ollama's users expect one per input: the mean.
            self._ctx.close()
            self._ctx = context(capi.POOLING_MEAN)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._ctx.close()

    def embed(self, inputs: list[str], *, truncate: bool = True, dimensions: int | None = None,
              cancelled: threading.Event | None = None) -> EmbedResult:
        """One normalised vector per input, in order.

        Raises PromptTooLong for an input over the context when truncate is
        false, ValueError for impossible dimensions, EngineError when
        `cancelled` is set (checked between inputs and between decodes, so a
        client that left stops the work within one decode).
        """
        if dimensions is not None and not 0 < dimensions <= self.model.n_embd:
            raise ValueError(f"dimensions must be between 1 and {self.model.n_embd}, got {dimensions}")
        start = time.monotonic_ns()
        token_lists: list[list[int]] = []
        for text in inputs:
            _check(cancelled)
            token_lists.append(self._tokens(text, truncate))
        vectors: list[list[float]] = []
        with self._lock, Batch(self.num_ctx, 1) as batch:
            for group in self._groups(token_lists):
                _check(cancelled)
                vectors.extend(self._embed_group(batch, group))
        if dimensions is not None:
            vectors = [_normalise(v[:dimensions]) for v in vectors]
        return EmbedResult(embeddings=vectors, prompt_eval_count=sum(map(len, token_lists)),
                           total_duration=time.monotonic_ns() - start)

    def _tokens(self, text: str, truncate: bool) -> list[int]:
        tokens = self.model.vocab.tokenize(text, add_special=True, parse_special=False)
        if not tokens:
            raise ValueError("cannot embed an empty input")
        if len(tokens) > self.num_ctx:
            if not truncate:
                raise PromptTooLong(f"the input length ({len(tokens)} tokens) exceeds the context length "
                                    f"({self.num_ctx})")
            log.info("embedding input truncated from %d to %d tokens", len(tokens), self.num_ctx)
            tokens = tokens[:self.num_ctx]
        return tokens

    def _groups(self, token_lists: list[list[int]]) -> list[list[list[int]]]:
        """Inputs packed into decodes: at most max_inputs sequences and num_ctx tokens each."""
        groups: list[list[list[int]]] = []
        size = 0
        for tokens in token_lists:
            if not groups or len(groups[-1]) == self._max_inputs or size + len(tokens) > self.num_ctx:
                groups.append([])
                size = 0
            groups[-1].append(tokens)
            size += len(tokens)
        return groups

    def _embed_group(self, batch: Batch, group: list[list[int]]) -> list[list[float]]:
        self._ctx.clear()
        batch.clear()
        for seq, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                batch.add(token, pos, (seq,), True)
        self._ctx.decode(batch)
        return [self._ctx.embedding(seq) for seq in range(len(group))]


def _check(cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise EngineError("the embedding request was cancelled")


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm > 0 else vector
