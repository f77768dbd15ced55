"""SIGTERM ends the server within its bound, even with every worker thread stuck and a model's runner loaded.

A worker thread cannot be stopped, and Python joins the executors' threads at
exit: here each is stuck in a pull from a registry that sends one byte of a
header line every half second, for ever. The server must still exit, its
runner processes killed, in about twice OLLAMA_PY_SHUTDOWN_TIMEOUT; the test
compares that with an idle shutdown measured the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from ollama_py import settings
from tests.server_harness import GUARD, MODEL, start_serve, wait_for
from tests.test_registry_harness import free_port

SHUTDOWN_TIMEOUT = 2.0


class TricklingRegistry:
    """Accepts every connection and answers with a header line that never ends."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.connections += 1
                threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn, suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.stop.wait(0.5):
                conn.sendall(b"x")

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        with suppress(OSError, ValueError, IndexError):
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@contextmanager
def server(tmp_path: Path, name: str) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(tmp_path / "store"),
           "OLLAMA_PY_CACHE": str(settings.load().cache), "OLLAMA_NUM_PARALLEL": "1",
           "OLLAMA_PY_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)}
    log = tmp_path / f"{name}.log"
    process, url = start_serve(env, log)
    try:
        yield process, url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stop(process: subprocess.Popen[bytes]) -> float:
    """Seconds from SIGTERM to the process's exit, which must be a clean one."""
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(GUARD) == 0
    return time.monotonic() - start


def test_sigterm_exits_within_its_bound_with_every_worker_thread_stuck(tmp_path: Path) -> None:
    with server(tmp_path, "idle") as (process, _, _):
        idle = stop(process)

    registry = TricklingRegistry()
    try:
        with server(tmp_path, "busy") as (process, url, log):
            answer = httpx.post(f"{url}/api/generate", timeout=GUARD, json={
                "model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}})
            assert answer.status_code == 200
            runners = children(process.pid)
            assert runners, "no runner process was started for the model"

            # One pull per thread of the server's shared executor, and some waiting for one.
            workers = min(32, (os.cpu_count() or 1) + 4)
            def pull() -> None:
                with suppress(httpx.HTTPError):  # cut off when the server exits
                    httpx.post(f"{url}/api/pull", json={"model": f"{registry.host}/library/stuck", "insecure": True},
                               timeout=GUARD)

            for _ in range(workers + 2):
                threading.Thread(target=pull, daemon=True).start()
            wait_for(lambda: registry.connections >= workers, "every worker thread is stuck in a pull")

            busy = stop(process)
            assert b"exiting with" in log.read_bytes()  # the bound, not the threads, ended it
            assert b"Traceback" not in log.read_bytes()
            for pid in runners:
                wait_for(lambda pid=pid: not running(pid), f"runner process {pid} is still running")
    finally:
        registry.close()
    # The bound is two shutdown timeouts; an idle shutdown gives the cost of everything else.
    assert busy < 3 * (idle + 2 * SHUTDOWN_TIMEOUT), f"{busy:.1f}s with stuck threads, {idle:.1f}s idle"
