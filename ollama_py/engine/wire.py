"""What the server and a runner process say to each other.

Messages are msgpack-encoded msgspec Structs, each frame a 4-byte big-endian
length and the body, over a socket pair the server makes. Calls (Start, Load,
Unload, Embed, Tokenize, Detokenize) get one reply, or an Error, carrying the
same `call` number. A Chat is answered by Events frames, each holding every
request's output of one step (text already split into content, reasoning and
tool calls) and the runners' stats, until its ChatDone or failure.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import msgspec

from ollama_py.engine.chat import ChatDelta, ChatDone, ChatRequest
from ollama_py.engine.placement import Placement
from ollama_py.engine.runner import RunnerOptions, RunnerStats

_HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # a frame this large means a broken stream, not a message


class _Message(msgspec.Struct, tag=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Completion(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """/api/generate's prompt where it is not a chat turn: raw, or around a suffix (fill in the middle)."""

    prompt: str
    raw: bool = False
    suffix: str = ""
    images: tuple[str, ...] = ()  # base64, for a raw prompt (placed at its [img-N] tags, else before it)


class ChatJob(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the runner process needs to render, tokenize, generate and parse one answer."""

    chat: ChatRequest  # the conversation (Modelfile SYSTEM and MESSAGEs already in), tools, format, sampling
    completion: Completion | None = None  # set for a raw or fill-in-the-middle prompt; chat.messages unused
    context: tuple[int, ...] = ()  # tokens before the prompt (/api/generate's deprecated conversation memory)
    return_context: bool = False  # the prompt and answer as tokens in ChatDone.context


# ---- server to runner process ---------------------------------------------------------


class Start(_Message):
    """Registers the RPC workers (in this order) as llama.cpp devices; answered by Started."""

    call: int
    workers: tuple[str, ...]


class Load(_Message):
    """Loads a model, its runner and its chat templates; answered by Loaded."""

    call: int
    model: int  # the server's number for this loaded model
    path: str
    runner: RunnerOptions
    num_gpu: int  # layers on the GPUs and workers; -1: all
    tensor_split: tuple[float, ...] = ()  # proportions per device in llama.cpp's order; empty: by free memory
    template: str = ""  # a Jinja chat template instead of the GGUF's own
    adapters: tuple[str, ...] = ()  # GGUF LoRA adapters applied to every context of the model
    projector: str = ""  # a vision projector (mmproj GGUF) for the model's images; "": it takes none
    draft: str = ""  # a draft model (GGUF) that proposes tokens for the model to verify; "": none, or drafting is off


class Unload(_Message):
    call: int
    model: int


class Chat(_Message):
    model: int
    id: int
    job: ChatJob


class Cancel(_Message):
    id: int


class Embed(_Message):
    call: int
    model: int
    inputs: list[str]
    truncate: bool
    dimensions: int | None


class Tokenize(_Message):
    call: int
    model: int
    text: str
    add_special: bool


class Detokenize(_Message):
    call: int
    model: int
    tokens: list[int]


ToRunner = Start | Load | Unload | Chat | Cancel | Embed | Tokenize | Detokenize


# ---- runner process to server ---------------------------------------------------------


class Started(_Message):
    call: int
    devices: tuple[tuple[str, str], ...]  # (device name, worker endpoint) of each remote device


class Loaded(_Message):
    call: int
    num_ctx: int
    n_vocab: int
    placement: tuple[Placement, ...]


class Unloaded(_Message):
    call: int


class Embedded(_Message):
    call: int
    embeddings: list[list[float]]
    prompt_eval_count: int
    total_duration: int


class Tokens(_Message):
    call: int
    tokens: list[int]


class Text(_Message):
    call: int
    text: str


class Error(_Message):
    """A call failed; `message` says why, for the user; `invalid` when the request was at fault (a 400)."""

    call: int
    message: str
    invalid: bool = False


class Failure(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    message: str
    invalid: bool = False


class Events(_Message):
    """Output of one or more steps; for one request, deltas come before its done or failure."""

    deltas: list[tuple[int, ChatDelta]] = []
    done: list[tuple[int, ChatDone]] = []
    failed: list[tuple[int, Failure]] = []
    stats: list[tuple[int, RunnerStats]] = []  # per loaded model


ToServer = Started | Loaded | Unloaded | Embedded | Tokens | Text | Error | Events

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
