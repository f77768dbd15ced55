"""What the engine tests read from a runner directly, without a server."""

from __future__ import annotations

import contextlib

from ollama_py.engine.runner import Runner
from ollama_py.engine.types import Done, GenerationRequest, Logprob, Token


async def collect(runner: Runner, request: GenerationRequest) -> tuple[list[int], str, list[Logprob], Done]:
    """The request's tokens, text, logprobs and final event."""
    tokens: list[int] = []
    text: list[str] = []
    logprobs: list[Logprob] = []
    done: Done | None = None
    async with contextlib.aclosing(runner.submit(request)) as events:
        async for event in events:
            text.append(event.text)
            if isinstance(event, Token):
                tokens.append(event.token)
                if event.logprob is not None:
                    logprobs.append(event.logprob)
            else:
                done = event
    assert done is not None
    return tokens, "".join(text), logprobs, done
