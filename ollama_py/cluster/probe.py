"""Asks an RPC worker, before llama.cpp does, whether it can serve this server now.

llama.cpp opens a worker with a HELLO handshake and aborts the whole process
when the connection fails or the protocol versions differ. Worse, a worker
busy with another client accepts the connection and then answers nobody else
until that client leaves (ggml-rpc-server serves one client at a time), so
llama.cpp would wait forever. The same handshake done here, with a timeout,
turns each of those into an error that names the worker.
"""

from __future__ import annotations

import socket
import struct

_HELLO = 14  # RPC_CMD_HELLO, the same in every protocol version
_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE (ggml-rpc/transport.h); all zero asks for plain TCP, no RDMA
_RESPONSE_SIZE = 4 + _CAPS_SIZE  # major, minor, patch, padding, caps
# RPC_PROTO_MAJOR_VERSION / MINOR of the pinned ggml-rpc.h: llama.cpp refuses another major or a newer minor.
PROTOCOL = (7, 0)


class WorkerUnavailable(Exception):
    """A worker a model needs cannot serve it; the server answers 503 (try again once it is back)."""

    status = 503


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets) as llama.cpp's RPC client parses it."""
    host, sep, port = endpoint.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"RPC worker {endpoint!r} is not host:port")
    return host.strip("[]"), int(port)


def hello(endpoint: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """The worker's protocol version, after checking that llama.cpp can talk to it now."""
    host, port = parse_endpoint(endpoint)
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise WorkerUnavailable(f"RPC worker {endpoint} is unreachable: {exc.strerror or exc}") from None
    with conn:
        try:
            conn.sendall(struct.pack("<BQ", _HELLO, _CAPS_SIZE) + bytes(_CAPS_SIZE))
            (size,) = struct.unpack("<Q", _receive(conn, 8))
            if size != _RESPONSE_SIZE:
                raise WorkerUnavailable(f"{endpoint} answered the handshake with {size} bytes: not a ggml RPC "
                                        "worker of this version")
            major, minor, patch = struct.unpack_from("<BBB", _receive(conn, size))
        except TimeoutError:
            raise WorkerUnavailable(
                f"RPC worker {endpoint} accepted the connection but did not answer within {timeout:g}s: it is "
                "serving another server (a worker serves one client at a time), or it hangs") from None
        except OSError as exc:
            raise WorkerUnavailable(f"RPC worker {endpoint} dropped the handshake: {exc.strerror or exc}") from None
    if major != PROTOCOL[0] or minor > PROTOCOL[1]:
        raise WorkerUnavailable(f"RPC worker {endpoint} speaks protocol {major}.{minor}.{patch}; this server needs "
                                f"{PROTOCOL[0]}.{PROTOCOL[1]} or an older {PROTOCOL[0]}.x: run the same ollama-py "
                                "version on the worker")
    return major, minor, patch


def _receive(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError(0, "the worker closed the connection")
        data += chunk
    return data


_PROBE_AFTER_DEATH = 2.0  # seconds each worker gets to answer when the runner process died, to name the dead one


def check_all(workers: tuple[str, ...]) -> None:
    """Raises WorkerUnavailable naming the first worker that cannot serve now."""
    for worker in workers:
        hello(worker)


def suspects(workers: tuple[str, ...]) -> str:
    """Which workers fail a handshake now that the runner process that held their only connection is gone."""
    failures = []
    for worker in workers:
        try:
            hello(worker, timeout=_PROBE_AFTER_DEATH)
        except WorkerUnavailable as exc:
            failures.append(str(exc))
    if not workers:
        return ""
    return "; ".join(failures) or f"its workers ({', '.join(workers)}) answer again"
