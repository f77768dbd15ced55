"""Writing a streamed answer to the terminal, and stopping it on Ctrl-C.

Shared by one-shot `run` and the REPL. While the first token is awaited (a
model load, a long prompt) a spinner turns on stderr; it is cleared before the
answer starts. Thinking, when the model streams it, is shown dimmed between
"Thinking..." and "...done thinking." as Ollama shows it, and lines wrap at
word boundaries on a terminal. Ctrl-C closes the stream, which hangs up on
the server, and returns what arrived so far.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO, TypeVar

import msgspec
from rich.cells import cell_len
from rich.console import Console

from ollama_py.api.native import ChatResponse, GenerateResponse, Metrics
from ollama_py.api.options import Think

log = logging.getLogger(__name__)

_DIM = "\x1b[2m"
_RESET = "\x1b[0m"


R = TypeVar("R", GenerateResponse, ChatResponse)


@dataclass
class Answer:
    """What the model said, and the counters of its last streamed object (None when it was cut short)."""

    content: str = ""
    thinking: str = ""
    metrics: Metrics | None = None
    interrupted: bool = False


def think_value(text: str) -> Think:
    """`true`/`false`, or a level, as the API's `think` takes it; ValueError names what is allowed."""
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    try:
        return msgspec.convert(lowered, Think)  # type: ignore[arg-type]
    except msgspec.ValidationError:
        raise ValueError(f"invalid think value {text!r}: expected true, false, low, medium, high or max") from None


def generate_parts(chunk: GenerateResponse) -> tuple[str, str]:
    """The new text of an /api/generate object: (content, thinking)."""
    return chunk.response, chunk.thinking


def chat_parts(chunk: ChatResponse) -> tuple[str, str]:
    """The new text of an /api/chat object: (content, thinking)."""
    return chunk.message.content, chunk.message.thinking


class _Display:
    """Puts content and thinking on the terminal in the order they arrive, wrapping at word boundaries.

    Wrapping is Ollama's: text streams a character at a time, so when a line
    fills up in the middle of a word, the cursor backs over that word, clears
    it, and writes it again at the start of the next line.
    """

    def __init__(self, out: TextIO, hide_thinking: bool, wrap: bool) -> None:
        self._out = out
        self._hide = hide_thinking
        self._thinking = False
        self._tty = out.isatty()
        self._width = shutil.get_terminal_size().columns if self._tty and wrap else 0
        self._column = 0
        self._word = ""

    def write(self, content: str, thinking: str) -> None:
        if thinking and not self._hide:
            if not self._thinking:
                self._thinking = True
                self._emit("Thinking...\n", dim=True)
            self._emit(thinking, dim=True)
        if content:
            self.end_thinking()
            self._emit(content)

    def end_thinking(self) -> None:
        if self._thinking:
            self._thinking = False
            self._emit("\n...done thinking.\n\n", dim=True)

    def _wrapped(self, text: str) -> str:
        if self._width < 10:
            return text
        out = []
        for ch in text:
            width = cell_len(ch)
            if ch == "\n":
                self._column, self._word = 0, ""
                out.append(ch)
            elif self._column + width <= self._width - 5:
                out.append(ch)
                self._column += width
                self._word = "" if ch == " " else self._word + ch
            elif ch == " ":
                out.append("\n")
                self._column, self._word = 0, ""
            elif self._word and cell_len(self._word) <= self._width - 10:
                out.append(f"\x1b[{cell_len(self._word)}D\x1b[K\n{self._word}{ch}")
                self._word += ch
                self._column = cell_len(self._word)
            else:
                out.append(f"\n{ch}")
                self._column, self._word = width, ch
        return "".join(out)

    def _emit(self, text: str, dim: bool = False) -> None:
        text = self._wrapped(text)
        self._out.write(f"{_DIM}{text}{_RESET}" if dim and self._tty else text)
        self._out.flush()


def show(chunks: Iterator[R], parts: Callable[[R], tuple[str, str]], *, hide_thinking: bool = False,
         wrap: bool = True, out: TextIO | None = None) -> Answer:
    """Streams an answer to `out` (stdout) until it is done or Ctrl-C stops it; `wrap` only on a terminal."""
    out = out or sys.stdout
    answer = Answer()
    display = _Display(out, hide_thinking, wrap)
    status = Console(file=sys.stderr).status("") if sys.stderr.isatty() else None
    if status is not None:
        status.start()
    try:
        for chunk in chunks:
            if status is not None:
                status.stop()
                status = None
            content, thinking = parts(chunk)
            answer.content += content
            answer.thinking += thinking
            display.write(content, thinking)
            if chunk.done:
                answer.metrics = chunk
    except KeyboardInterrupt:
        answer.interrupted = True
        log.debug("answer stopped by Ctrl-C after %d characters", len(answer.content))
    finally:
        if status is not None:
            status.stop()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        display.end_thinking()
    return answer
