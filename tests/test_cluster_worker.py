"""`ollama-py worker`, and the handshake that checks a worker before llama.cpp may use it."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ollama_py.cluster.probe import PROTOCOL, WorkerUnavailable, hello
from tests.cluster_harness import PROBE, WORKER, free_port, stop, wait_until, worker_argv
from tests.server_harness import GUARD


def listening_address(port: int) -> str | None:
    """The IPv4 address a TCP socket listens on for `port`, from the kernel's table."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                return socket.inet_ntoa(struct.pack("<I", int(address, 16)))
    return None


@contextmanager
def worker() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    proc = subprocess.Popen(worker_argv("127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: hello(f"127.0.0.1:{port}", timeout=PROBE), "worker", proc)
        yield proc, port
    finally:
        stop([proc])


def test_worker_listens_on_loopback_only_and_warns_that_the_protocol_is_open() -> None:
    with worker() as (proc, port):
        assert hello(f"127.0.0.1:{port}")[:2] == PROTOCOL
        assert listening_address(port) == "127.0.0.1"
        proc.kill()
        warning = proc.stderr.read().decode() if proc.stderr else ""
    assert "no authentication and no encryption" in warning
    assert f"127.0.0.1:{port}" in warning
    assert "trusted private network" in warning
    assert f"OLLAMA_RPC_SERVERS=127.0.0.1:{port}" in warning


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "NOPE0"], "--device NOPE0: no such device here; this machine has"),
    (["--host", "worker.example"], "give an IP address of this machine"),
])
def test_worker_refuses_options_that_cannot_work(args: list[str], message: str) -> None:
    result = subprocess.run([*WORKER, *args], capture_output=True, text=True, timeout=GUARD)
    assert result.returncode != 0
    assert message in result.stderr
    assert "no authentication" not in result.stderr  # refused before anything was started


def test_a_worker_busy_with_another_server_is_refused_not_waited_for() -> None:
    with worker() as (_, port):
        endpoint = f"127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port)) as other:  # another server holds the worker
            other.sendall(struct.pack("<BQ", 14, 24) + bytes(24))
            other.recv(64)
            with pytest.raises(WorkerUnavailable, match="serving another server"):
                hello(endpoint, timeout=1)
        # Free again once the other server let go; the worker may take its time noticing on a busy machine.
        assert hello(endpoint, timeout=GUARD)[:2] == PROTOCOL


def test_an_unreachable_worker_is_named() -> None:
    port = free_port()
    with pytest.raises(WorkerUnavailable, match=f"RPC worker 127.0.0.1:{port} is unreachable: Connection refused"):
        hello(f"127.0.0.1:{port}")


@pytest.mark.parametrize(("answer", "message"), [
    (b"", "dropped the handshake"),
    (struct.pack("<Q", 3) + b"abc", "not a ggml RPC worker of this version"),
    (struct.pack("<QBBBB", 28, 6, 0, 0, 0) + bytes(24), "speaks protocol 6.0.0; this server needs 7.0"),
])
def test_something_that_is_not_a_worker_of_this_version_is_refused(answer: bytes, message: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(answer)

        thread = threading.Thread(target=serve)
        thread.start()
        with pytest.raises(WorkerUnavailable, match=message):
            hello(f"127.0.0.1:{port}")
        thread.join()
