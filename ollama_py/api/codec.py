"""Decoding request bodies and encoding responses, one codec per type.

msgspec's validation messages already name the field (``at `$.options.num_ctx` ``);
they are passed on as they are, so a client learns what to fix.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class BadRequest(ValueError):
    """A body that is not JSON, or not of the request's shape: a 400 for the client."""


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder


def decode(body: bytes, kind: type[T]) -> T:
    """The body as `kind`, or BadRequest saying what is wrong and where."""
    if not body.strip():
        raise BadRequest("missing request body")
    try:
        return _decoder(kind).decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def encode_line(value: Any) -> bytes:
    """One NDJSON line."""
    buf = bytearray()
    _encoder.encode_into(value, buf)
    buf += b"\n"
    return bytes(buf)
