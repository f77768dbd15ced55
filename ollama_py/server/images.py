"""Images as the engine takes them (base64 text) from the ways the APIs send them, checked at the edge.

Remote URLs are refused: the server does not fetch what a request points at.
Each image is read only as far as its header here, for its format and size:
one that is no image, or claims more pixels than OLLAMA_PY_MAX_IMAGE_PIXELS
(a small file can unpack into gigabytes), is a 400 before any model is held.
Decoding the pixels happens in the model's runner process.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from ollama_py.api import codec

# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments in the same range.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def from_data_url(url: str, *, field: str) -> str:
    """The base64 payload of a `data:<type>;base64,<data>` URL."""
    if not url.startswith("data:") or ";base64," not in url:
        raise codec.BadRequest(f"{field}: only data: URIs with base64 content are supported, not remote URLs")
    return url.split(";base64,", 1)[1]


def dimensions(data: bytes) -> tuple[str, int, int]:
    """The format, width and height a PNG, JPEG, GIF or BMP file's header gives; ValueError for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("a truncated PNG header")
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith((b"GIF87a", b"GIF89a")):
        if len(data) < 10:
            raise ValueError("a truncated GIF header")
        width, height = struct.unpack("<HH", data[6:10])
        return "gif", width, height
    if data.startswith(b"BM"):
        if len(data) < 26:
            raise ValueError("a truncated BMP header")
        width, height = struct.unpack("<ii", data[18:26])
        return "bmp", abs(width), abs(height)
    if data.startswith(b"\xff\xd8\xff"):
        return ("jpeg", *_jpeg_size(data))
    raise ValueError("not a PNG, JPEG, GIF or BMP image")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("a JPEG with a broken segment")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _JPEG_FRAMES:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise ValueError("a JPEG without its frame header (truncated?)")


def check(pictures: Iterable[tuple[str, str]], max_pixels: int) -> None:
    """Refuses (400) an image that is not base64, not an image, or larger than `max_pixels`.

    `pictures` are (where, base64) pairs; `where` names the image in the message.
    """
    for where, text in pictures:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise codec.BadRequest(f"{where}: invalid image: not valid base64") from None
        try:
            kind, width, height = dimensions(data)
        except ValueError as exc:
            raise codec.BadRequest(f"{where}: invalid image: {exc}") from None
        if width == 0 or height == 0:
            raise codec.BadRequest(f"{where}: invalid image: a {kind} of {width}x{height} pixels")
        if width * height > max_pixels:
            raise codec.BadRequest(f"{where}: the image is {width}x{height} pixels, more than this server's limit "
                                   f"of {max_pixels} (OLLAMA_PY_MAX_IMAGE_PIXELS)")


def of_messages(messages: Iterable[Mapping[str, Any]]) -> Iterable[tuple[str, str]]:
    """Every image of a conversation, named by where it is."""
    for i, message in enumerate(messages):
        for k, text in enumerate(message.get("images") or ()):
            yield f"messages[{i}].images[{k}]", text
