"""The registry test harness: Debian's docker-registry on loopback, a counting proxy, a fake registry.

Only the standard library, so that the pull benchmark (bench/pull_bench.py)
starts its registry the same way the tests do. Needs the Debian packages
`docker-registry` (the registry) and `apache2-utils` (`htpasswd`, for the
registry's password file).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import http.client
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

USER, PASSWORD = "alice", "s3cret-Pa55word"
# How long the registry may take to start or stop on a busy machine: a guard against a hang, not a speed check.
GUARD = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Polls until the server answers; startup takes a moment, and a server that exits or never starts fails here."""
    deadline = time.monotonic() + GUARD
    while True:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection(url, timeout=10)
            conn.request("GET", "/v2/")
            if conn.getresponse().status in (200, 401):
                return
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            output = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"{url} {'exited' if exited else f'did not start in {GUARD:g}s'}:\n{output}")
        time.sleep(0.05)


class RegistryProcess:
    """`docker-registry serve` on a free loopback port with its own storage, optionally behind htpasswd."""

    def __init__(self, root: Path, *, users: dict[str, str] | None = None) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed: apt-get install docker-registry apache2-utils")
        root.mkdir(parents=True, exist_ok=True)
        self.storage = root / "data"
        self.host = f"127.0.0.1:{free_port()}"
        auth = ""
        if users:
            lines = [subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True,
                                    text=True).stdout.strip() for user, password in users.items()]
            (root / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: test-registry\n    path: {root / 'htpasswd'}\n"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n{auth}")
        self.log = root / "registry.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
        wait_until_up(self.host, self.process, self.log)

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (its filesystem driver's layout)."""
        hex_ = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def running_registry(root: Path, **kw: dict[str, str]) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(root, **kw)
    try:
        yield reg
    finally:
        reg.stop()


_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
_BLOB = re.compile(r"/v2/.+/blobs/(sha256:[0-9a-f]{64})")


class Proxy:
    """An HTTP proxy in front of a registry that counts the blob bytes it passes, per digest.

    It can also misbehave on purpose: cut every blob range that starts at or
    after `fail_from` halfway, serve ranges from `slow_from` on slowly (64 KiB
    per `delay` seconds), or ask for a bearer token (served by itself at
    /token, for `USER` and `PASSWORD`) and revoke the first one after
    `revoke_after` requests, as an expiring token would be.
    """

    def __init__(self, upstream: str, *, fail_from: int | None = None, slow_from: int | None = None,
                 delay: float = 0.05, token: str | None = None, revoke_after: int | None = None) -> None:
        self.upstream = upstream
        self.fail_from = fail_from
        self.slow_from = slow_from
        self.delay = delay
        self.token = token
        self.revoke_after = revoke_after
        self.blob_bytes: collections.Counter[str] = collections.Counter()
        self.token_requests = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _token_gate(self, h: http.server.BaseHTTPRequestHandler) -> bool:
        """Answers token requests and challenges requests without the token; True when it answered."""
        if h.path.startswith("/token"):
            with self.lock:
                self.token_requests += 1
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            ok = h.headers.get("Authorization") == expected
            body = json.dumps({"token": self.token}).encode() if ok else b'{"errors":[{"message":"denied"}]}'
            h.send_response(200 if ok else 401)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return True
        if h.headers.get("Authorization") == f"Bearer {self.token}":
            with self.lock:
                if self.revoke_after is not None:
                    self.revoke_after -= 1
                    if self.revoke_after == 0:
                        self.token = f"{self.token}-renewed"
            return False
        h.send_response(401)
        h.send_header("WWW-Authenticate", f'Bearer realm="http://{self.host}/token",service="test",'
                                          'scope="repository:library/smollm2:pull,push"')
        h.send_header("Content-Length", "0")
        h.end_headers()
        return True

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        if self.token is not None and self._token_gate(h):
            return
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(self.upstream, timeout=GUARD)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP and k.lower() != "authorization"}
        conn.request(h.command, h.path, body=body, headers=headers)
        resp = conn.getresponse()
        h.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP:
                h.send_header(key, value)
        blob = _BLOB.match(h.path) if h.command == "GET" else None
        if h.command == "HEAD":
            h.send_header("Content-Length", resp.getheader("Content-Length") or "0")
            h.end_headers()
            conn.close()
            return
        data_length = resp.getheader("Content-Length")
        if data_length is None:
            data = resp.read()
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            conn.close()
            return
        h.send_header("Content-Length", data_length)
        h.end_headers()
        start = int(m.group(1)) if (m := re.match(r"bytes=(\d+)-", h.headers.get("Range", ""))) else 0
        cut = int(data_length) // 2 if blob and self.fail_from is not None and start >= self.fail_from else None
        slow = bool(blob) and self.slow_from is not None and start >= self.slow_from
        sent = 0
        try:
            while block := resp.read(1 << 16 if slow else 1 << 20):
                if cut is not None and sent + len(block) > cut:
                    block = block[:cut - sent]
                h.wfile.write(block)
                sent += len(block)
                if blob:
                    with self.lock:
                        self.blob_bytes[blob.group(1)] += len(block)
                if cut is not None and sent >= cut:
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return
                if slow:
                    time.sleep(self.delay)
        except OSError:
            h.close_connection = True
        finally:
            conn.close()


class FakeRegistry:
    """A registry that answers from a table: for answers no real registry gives (hostile manifests, foreign realms)."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]], *, host: str = "127.0.0.1") -> None:
        self.routes = routes
        self.requests: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                status, headers, body = fake.routes.get(self.path.split("?")[0], (404, {}, b"{}"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.host = f"{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
