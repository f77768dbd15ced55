"""What the server and its RPC runner process say to each other.

Messages are msgpack-encoded msgspec Structs, each frame a 4-byte big-endian
length and the body, over a socket pair the server makes. Calls (Start, Load,
Unload, Embed) get one reply, or an Error, carrying the same `call` number; a Submit is
answered by Events frames, which carry every request's output of one step and
the runners' stats, until its Done or failure.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import msgspec

from ollama_py.cluster.placement import Placement
from ollama_py.engine.runner import RunnerOptions, RunnerStats
from ollama_py.engine.types import Done, GenerationRequest, Token

_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # a frame this large means a broken stream, not a message


class _Message(msgspec.Struct, tag=True, kw_only=True, forbid_unknown_fields=True):
    pass


# ---- server to runner process ---------------------------------------------------------


class Start(_Message):
    """Registers the workers (in this order) as llama.cpp devices; answered by Started."""

    call: int
    workers: tuple[str, ...]


class Load(_Message):
    """Loads a model split across the devices; answered by Loaded."""

    call: int
    model: int  # the server's number for this loaded model
    path: str
    runner: RunnerOptions
    num_gpu: int  # layers on the devices (workers and GPUs); -1: all
    tensor_split: tuple[float, ...] = ()  # proportions per device in llama.cpp's order; empty: by free memory


class Unload(_Message):
    call: int
    model: int


class Submit(_Message):
    model: int
    id: int
    request: GenerationRequest


class Cancel(_Message):
    id: int


class Embed(_Message):
    call: int
    model: int
    inputs: list[str]
    truncate: bool
    dimensions: int | None


ToRunner = Start | Load | Unload | Submit | Cancel | Embed


# ---- runner process to server ---------------------------------------------------------


class Started(_Message):
    call: int
    devices: tuple[tuple[str, str], ...]  # (device name, worker endpoint) of each remote device


class Loaded(_Message):
    call: int
    num_ctx: int
    placement: tuple[Placement, ...]


class Unloaded(_Message):
    call: int


class Embedded(_Message):
    call: int
    embeddings: list[list[float]]
    prompt_eval_count: int
    total_duration: int


class Error(_Message):
    """A call failed; `message` says why, for the user."""

    call: int
    message: str


class Events(_Message):
    """Output of one or more steps; for one request, tokens come before its done or failure."""

    tokens: list[tuple[int, Token]] = []
    done: list[tuple[int, Done]] = []
    failed: list[tuple[int, str]] = []
    stats: list[tuple[int, RunnerStats]] = []  # per loaded model


ToServer = Started | Loaded | Unloaded | Embedded | Error | Events

_encoder = msgspec.msgpack.Encoder()
to_runner = msgspec.msgpack.Decoder(ToRunner)  # type: ignore[arg-type]
to_server = msgspec.msgpack.Decoder(ToServer)  # type: ignore[arg-type]


def frame(message: _Message) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def read_frame(sock: socket.socket) -> bytes | None:
    """The next frame's body, or None once the other side has closed (blocking)."""
    header = _read_exactly(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ConnectionError(f"frame of {size} bytes")
    body = _read_exactly(sock, size)
    if body is None:
        raise ConnectionError("the stream ended inside a frame")
    return body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            if chunks:
                raise ConnectionError("the stream ended inside a frame")
            return None
        chunks += chunk
    return bytes(chunks)


async def read_frame_async(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's body, or None once the other side has closed."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionError("the stream ended inside a frame") from None
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ConnectionError(f"frame of {size} bytes")
    return await reader.readexactly(size)
