"""Text out of a token stream: whole UTF-8 characters, and stop strings that may
span several tokens without ever leaking a partial match to the client."""

from __future__ import annotations

import codecs


class StopMatcher:
    """Holds back any tail of the output that could still grow into a stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.matched = ""  # the stop string that ended the output, once one has

    def feed(self, text: str) -> tuple[str, bool]:
        """Text that is safe to emit now, and whether a stop string was completed.

        On a stop, the stop string and whatever followed it are dropped, as
        Ollama and llama-server do.
        """
        buffer = self._held + text
        found = [(i, s) for s in self._stops if (i := buffer.find(s)) >= 0]
        if found:
            cut, self.matched = min(found)
            self._held = ""
            return buffer[:cut], True
        keep = self._partial_tail(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], False

    def flush(self) -> str:
        """The held-back tail, released because generation ended without completing a stop."""
        held, self._held = self._held, ""
        return held

    def _partial_tail(self, buffer: str) -> int:
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best


class TokenText:
    """Token bytes to text, keeping a character split across tokens until it is whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return str(self._decoder.decode(piece))

    def flush(self) -> str:
        return str(self._decoder.decode(b"", final=True))
