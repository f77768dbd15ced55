"""One sequence, one context: the simplest generation loop over the binding.

The engine batches many sequences; this loop serves the CLI before a server
runs, and the tests that pin the binding's behaviour.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

from ollama_py.llama.batch import Batch
from ollama_py.llama.context import Context
from ollama_py.llama.sampler import SamplerChain


def generate_tokens(ctx: Context, sampler: SamplerChain, prompt: list[int], max_tokens: int,
                    seq_id: int = 0) -> Iterator[int]:
    """Yields sampled tokens until an end-of-generation token or max_tokens."""
    if not prompt:
        raise ValueError("the prompt has no tokens")
    if len(prompt) + max_tokens > ctx.n_ctx_seq:
        raise ValueError(f"prompt ({len(prompt)} tokens) plus {max_tokens} new tokens exceed "
                         f"the context ({ctx.n_ctx_seq} tokens)")
    vocab = ctx.model.vocab
    ctx.seq_rm(seq_id)
    with Batch(max(ctx.n_batch, 1), 1) as batch:
        index = -1
        for start in range(0, len(prompt), ctx.n_batch):
            batch.clear()
            chunk = prompt[start:start + ctx.n_batch]
            index = batch.add_sequence(chunk, start, seq_id)
            ctx.decode(batch)
        pos = len(prompt)
        for _ in range(max_tokens):
            token = sampler.sample(ctx, index)
            if vocab.is_eog(token):
                return
            yield token
            batch.clear()
            index = batch.add(token, pos, (seq_id,), True)
            pos += 1
            ctx.decode(batch)


def generate_text(ctx: Context, sampler: SamplerChain, prompt: list[int], max_tokens: int) -> Iterator[str]:
    """Like generate_tokens, as text; a character split across tokens comes out whole."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    vocab = ctx.model.vocab
    for token in generate_tokens(ctx, sampler, prompt, max_tokens):
        text = decoder.decode(vocab.token_to_piece(token))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
