"""Recent /v1/responses answers, so that `previous_response_id` continues a conversation without resending it.

Ollama keeps nothing (its Responses API is stateless); agents written for
OpenAI send only the new turn and the previous response's id. The store is
in memory and bounded three ways (OLLAMA_PY_RESPONSES_MAX, _MAX_BYTES,
_MAX_AGE): the oldest go first, and an answer larger than the whole byte
budget is not kept. Only the event loop's handlers touch it, so it needs no lock.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ollama_py.api import codec, responses
from ollama_py.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    """A response, and the conversation a follow-up continues: every turn before it and its own answer."""

    response: responses.Response
    conversation: tuple[dict[str, Any], ...]
    size: int  # bytes, as encoded
    stored_at: float  # on the store's clock


class ResponseStore:
    def __init__(self, *, max_count: int, max_bytes: int, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._items: OrderedDict[str, Stored] = OrderedDict()  # oldest first
        self.bytes = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ResponseStore:
        return cls(max_count=settings.responses_max, max_bytes=settings.responses_max_bytes,
                   max_age=settings.responses_max_age)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response: responses.Response, conversation: tuple[dict[str, Any], ...]) -> bool:
        """Keeps the response (evicting the oldest as the bounds require); False if it cannot be kept at all."""
        size = len(codec.encode(response)) + len(orjson.dumps(conversation))
        if self.max_count <= 0 or size > self.max_bytes:
            log.info("response %s (%d bytes) not kept: over OLLAMA_PY_RESPONSES_MAX or _MAX_BYTES", response.id, size)
            return False
        self._drop(response.id)
        self._items[response.id] = Stored(response=response, conversation=conversation, size=size,
                                          stored_at=self._clock())
        self.bytes += size
        self._evict()
        return True

    def get(self, response_id: str) -> Stored | None:
        self._evict()
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        self._evict()
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        self.bytes -= stored.size
        return True

    def _evict(self) -> None:
        """Drops what is too old, then the oldest while there are too many or they are too large."""
        deadline = self._clock() - self.max_age
        while self._items:
            oldest = next(iter(self._items.values()))
            if oldest.stored_at >= deadline and len(self._items) <= self.max_count and self.bytes <= self.max_bytes:
                return
            self._drop(oldest.response.id)
