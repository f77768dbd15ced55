"""Images in a prompt, for a model with a projector.

A request's images are decoded once, put into the rendered prompt through
markers no user text can hold, and tokenized by mtmd into text tokens and
image chunks. In the prompt handed to the runner an image stands as a run of
placeholder ids, one per image token: negative (never a vocabulary token)
and derived from the image's pixels (mtmd's SHA-256 id), so the same image
gives the same run in every request. Prefix reuse then works for images as
for text: a slot (or a saved state) that already holds an image's run holds
its embeddings, and the image is not encoded again. The runner prefills a
run by encoding the image and decoding its embeddings in a batch of their
own (`prefill`), between the text of the same prompt.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from ollama_py.llama.context import Context
from ollama_py.llama.mtmd import Bitmap, ImageChunk, ImageError, Projector

# Placeholder ids are -1 .. -2**30: they fit the prompt caches' int32 token arrays.
_ID_BITS = 30


def placeholders(image_id: str, n_tokens: int) -> list[int]:
    """The run of ids that stands for an image's `n_tokens` tokens; the same image, the same run."""
    rng = random.Random(image_id)
    return [-1 - rng.getrandbits(_ID_BITS) for _ in range(n_tokens)]


def has_images(messages: Iterable[Mapping[str, Any]]) -> bool:
    return any(m.get("images") for m in messages)


def decode_base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{where}: not valid base64") from None


class PromptImages:
    """A prompt's image chunks, by the first id of their placeholder run (positions may move: a `context`
    may go before the prompt)."""

    def __init__(self, chunks: Mapping[int, ImageChunk] | None = None) -> None:
        self._chunks = dict(chunks or {})

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def at(self, prompt: tuple[int, ...] | list[int], pos: int) -> ImageChunk:
        chunk = self._chunks.get(prompt[pos])
        if chunk is None:
            raise KeyError(f"no image starts at prompt position {pos}")
        return chunk

    def start_of(self, prompt: tuple[int, ...] | list[int], pos: int) -> int:
        """`pos`, or the start of the image run it falls inside: a prefix may not keep part of an image."""
        i = 0
        while i < pos:
            if prompt[i] >= 0:
                i += 1
                continue
            end = i + self.at(prompt, i).n_tokens
            if pos < end:
                return i
            i = end
        return pos


def text_run(pending: list[int], limit: int) -> int:
    """How many of the first `limit` pending tokens are text (before the next image)."""
    for i, token in enumerate(pending[:limit]):
        if token < 0:
            return i
    return min(limit, len(pending))


def prefill(ctx: Context, images: PromptImages, prompt: tuple[int, ...], pos: int, seq_id: int,
            n_batch: int) -> int:
    """Encodes the image starting at prompt position `pos` and decodes its embeddings into `seq_id` there;
    returns its token count. Runs on the runner thread, in a decode of its own."""
    chunk = images.at(prompt, pos)
    chunk.projector.decode_image(ctx, chunk, pos, seq_id, n_batch)
    return chunk.n_tokens


class VisionPrompt:
    """One request's images, marked into its messages and tokenized with the rendered prompt."""

    def __init__(self, projector: Projector, messages: Iterable[Mapping[str, Any]]) -> None:
        self._projector = projector
        self._nonce = secrets.token_hex(8)
        self._pattern = re.compile(rf"<__image_{self._nonce}_(\d+)__>")
        self._bitmaps: list[Bitmap] = []
        self._chunks: dict[int, ImageChunk] = {}
        self.messages: list[dict[str, Any]] = []
        try:
            for i, message in enumerate(messages):
                pictures = message.get("images") or ()
                marks = "".join(self._add(text, f"messages[{i}].images[{k}]") for k, text in enumerate(pictures))
                turn = {k: v for k, v in message.items() if k != "images"}
                if marks:
                    turn["content"] = marks + str(message.get("content") or "")
                self.messages.append(turn)
        except BaseException:
            self.close()
            raise

    def _add(self, text: str, where: str) -> str:
        try:
            self._bitmaps.append(self._projector.bitmap(decode_base64(text, where)))
        except ImageError as exc:
            raise ImageError(f"{where}: {exc}") from None
        return f"<__image_{self._nonce}_{len(self._bitmaps) - 1}__>"

    def mark_raw(self, prompt: str, images: Iterable[str]) -> str:
        """A raw prompt with its images: each where the prompt says `[img-N]` (Ollama's tag), the others
        before the text."""
        marks = [self._add(text, f"images[{k}]") for k, text in enumerate(images)]
        used: set[int] = set()

        def tag(match: re.Match[str]) -> str:
            k = int(match.group(1))
            if k >= len(marks):
                return match.group(0)
            used.add(k)
            return marks[k]

        text = re.sub(r"\[img-(\d+)\]", tag, prompt)
        return "".join(m for k, m in enumerate(marks) if k not in used) + text

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """The rendered prompt as tokens, each image as its placeholder run."""
        order = [int(k) for k in self._pattern.findall(text)]
        plain = self._pattern.sub(lambda _m: self._projector.marker, text)
        parts = self._projector.tokenize(plain, [self._bitmaps[k] for k in order], add_special=add_special)
        tokens: list[int] = []
        for part in parts:
            if isinstance(part, ImageChunk):
                run = placeholders(part.id, part.n_tokens)
                self._chunks.setdefault(run[0], part)
                tokens += run
            else:
                tokens += part
        if tokens and tokens[-1] < 0:
            raise ImageError("the prompt cannot end with an image: put text after it")
        return tokens

    def images(self, prompt: tuple[int, ...]) -> PromptImages:
        """The chunks of the images `prompt` holds (turns dropped to fit the context took theirs along)."""
        held = PromptImages(self._chunks)
        found: dict[int, ImageChunk] = {}
        i = 0
        while i < len(prompt):
            if prompt[i] < 0:
                chunk = held.at(prompt, i)
                found[prompt[i]] = chunk
                i += chunk.n_tokens
            else:
                i += 1
        return PromptImages(found)

    def close(self) -> None:
        """Frees the decoded pixels (the chunks the prompt uses live on with the request)."""
        for bitmap in self._bitmaps:
            bitmap.close()
        self._bitmaps.clear()

