"""The HTTP client the commands use to talk to an ollama-py (or Ollama) server.

Synchronous on purpose: a command does one thing at a time, and a blocking
read is what lets Ctrl-C stop an answer: the interrupt lands in the read, the
connection is closed, and the server sees its client go and frees the slot.
Streams are NDJSON, one object a line; an `{"error": ...}` line (a failure
after the first byte) is raised like an error status.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec

from ollama_py.api.native import ErrorResponse
from ollama_py.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 11434
# A model load or a long prefill sends nothing for a while; a stream only ends when the server ends it.
_CONNECT_TIMEOUT = 5.0
_BLOB_CHUNK = 1 << 20
# How long `serve` may take to answer after a background start (imports, binding the port).
_START_TIMEOUT = 120.0


class ClientError(Exception):
    """Anything a command reports as `Error: ...` and exits 1."""


class ConnectError(ClientError):
    """No server answers at the configured host."""


UNREACHABLE = "could not connect to ollama-py server, is it running?"


class ResponseError(ClientError):
    """The server answered with an error: its status and its `error` message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BaseURL:
    """Where the server is, parsed from OLLAMA_HOST the way Ollama parses it (envconfig Host)."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @classmethod
    def parse(cls, value: str) -> BaseURL:
        """`[scheme://]host[:port][/path]`; the port defaults to 11434, or 80/443 when a scheme is given."""
        text = value.strip().strip("\"'")
        scheme, sep, rest = text.partition("://")
        default_port = DEFAULT_PORT
        if not sep:
            scheme, rest = "http", text
        elif scheme == "http":
            default_port = 80
        elif scheme == "https":
            default_port = 443
        else:
            raise ClientError(f"OLLAMA_HOST={value!r}: the scheme must be http or https")
        hostport, _, path = rest.partition("/")
        host, port = _split_host_port(hostport, default_port)
        return cls(scheme, host or "127.0.0.1", port, f"/{path}".rstrip("/") if path else "")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def connect_host(self) -> str:
        """The address to dial: a server bound to every interface is reached on loopback."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)

    @property
    def is_local(self) -> bool:
        """Whether a server for this address would run on this machine (so the CLI may start one)."""
        if self.host == "localhost":
            return True
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return address.is_loopback or address.is_unspecified


def _split_host_port(hostport: str, default_port: int) -> tuple[str, int]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:
        host, port_text = hostport, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = default_port
    return host, port if 0 <= port <= 65535 else default_port


class Client:
    """One server; every call opens its own connection, so a stopped stream leaves nothing behind."""

    def __init__(self, base: BaseURL, api_key: str = "") -> None:
        self.base = base
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.base.scheme == "https" else http.client.HTTPConnection
        return kind(self.base.connect_host, self.base.port, timeout=timeout, blocksize=_BLOB_CHUNK)

    def _send(self, conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        url = self.base.path + path
        all_headers = {**self._auth, **(headers or {})}
        if body is None or hasattr(body, "read"):
            payload = body
        else:
            payload = msgspec.json.encode(body)
            all_headers["Content-Type"] = "application/json"
        try:
            conn.request(method, url, body=payload, headers=all_headers)
            if conn.sock is not None:
                conn.sock.settimeout(None)
            response = conn.getresponse()
        except (TimeoutError, ConnectionRefusedError, socket.gaierror) as exc:
            raise ConnectError(UNREACHABLE) from exc
        except OSError as exc:
            raise ConnectError(f"{UNREACHABLE} ({exc})") from exc
        if response.status >= 400:
            message = _error_message(response)
            if response.status == 401 and not self._auth:
                message += "; set OLLAMA_API_KEY to one of the server's keys"
            raise ResponseError(response.status, message)
        return response

    def heartbeat(self) -> bool:
        """Whether a server answers at the base URL (an error status is an answer too)."""
        try:
            with closing(self._connection(_CONNECT_TIMEOUT)) as conn:
                self._send(conn, "HEAD", "/").read()
        except ResponseError:
            return True
        except ClientError:
            return False
        return True

    def call(self, method: str, path: str, body: Any = None, *, type: type[T] = Any) -> T:  # type: ignore[assignment]
        """One request and its whole JSON answer, decoded as `type`."""
        with closing(self._connection(_CONNECT_TIMEOUT)) as conn:
            data = self._send(conn, method, path, body).read()
        return msgspec.json.decode(data, type=type) if data else None  # type: ignore[return-value]

    def stream(self, path: str, body: Any, *, type: type[T] = Any) -> Iterator[T]:  # type: ignore[assignment]
        """POSTs `body` and yields each NDJSON object as it arrives; closing the iterator hangs up."""
        decoder = msgspec.json.Decoder(type)
        with closing(self._connection(_CONNECT_TIMEOUT)) as conn:
            response = self._send(conn, "POST", path, body)
            try:
                for line in response:
                    if not line.strip():
                        continue
                    failure = _stream_error(line)
                    if failure is not None:
                        raise ResponseError(response.status, failure)
                    yield decoder.decode(line)
            except (OSError, http.client.HTTPException) as exc:
                raise ClientError(f"the server closed the connection mid-answer ({exc})") from exc

    def has_blob(self, digest: str) -> bool:
        try:
            with closing(self._connection(_CONNECT_TIMEOUT)) as conn:
                self._send(conn, "HEAD", f"/api/blobs/{quote(digest)}").read()
            return True
        except ResponseError as exc:
            if exc.status == 404:
                return False
            raise

    def push_blob(self, digest: str, path: Path, progress: Callable[[int], None]) -> None:
        """Uploads a file as a blob (POST /api/blobs/<digest>), reporting bytes sent."""
        size = path.stat().st_size
        with path.open("rb") as f, closing(self._connection(_CONNECT_TIMEOUT)) as conn:
            self._send(conn, "POST", f"/api/blobs/{quote(digest)}", _Reader(f, progress),
                       headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"}).read()


class _Reader:
    """A file that counts what http.client reads from it, for the upload's progress bar."""

    def __init__(self, f: Any, progress: Callable[[int], None]) -> None:
        self._f = f
        self._progress = progress
        self._done = 0

    def read(self, n: int = _BLOB_CHUNK) -> bytes:
        block = self._f.read(n)
        self._done += len(block)
        self._progress(self._done)
        return block


def _error_message(response: http.client.HTTPResponse) -> str:
    data = response.read()
    try:
        return msgspec.json.decode(data, type=ErrorResponse).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = data.decode("utf-8", "replace").strip()
        return text or f"{response.status} {response.reason}"


def _stream_error(line: bytes) -> str | None:
    if b'"error"' not in line:
        return None
    try:
        return msgspec.json.decode(line, type=ErrorResponse).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def start_server(settings: Settings, client: Client, say: Callable[[str], None]) -> None:
    """Starts `ollama-py serve` in the background, detached, and waits until it answers.

    As Ollama's desktop app does for its CLI: the first command on a fresh
    machine just works. Its output goes to `serve.log` in the cache folder,
    which starts with the server's pid so it can be found and stopped.
    """
    if not client.base.is_local:
        raise ConnectError(f"{UNREACHABLE} (OLLAMA_HOST is {client.base})")
    settings.cache.mkdir(parents=True, exist_ok=True)
    log_path = settings.cache / "serve.log"
    say(f"Starting the ollama-py server in the background (log: {log_path})")
    with log_path.open("ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "ollama_py.cli.main", "serve"],
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True)
        log_file.write(f"{datetime.now().isoformat(timespec='seconds')} ollama-py serve started in the "
                       f"background by the CLI, pid {process.pid}\n".encode())
    deadline = time.monotonic() + _START_TIMEOUT
    while not client.heartbeat():
        code = process.poll()
        if code is not None and not client.heartbeat():
            raise ConnectError(f"the ollama-py server exited with status {code} before answering; "
                               f"its log is {log_path}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise ConnectError(f"the ollama-py server (pid {process.pid}) did not answer at {client.base}; "
                               f"see its log: {log_path}")
        time.sleep(0.1)
    log.debug("server pid %d answers at %s", process.pid, client.base)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
