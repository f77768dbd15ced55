"""Pull and push against Debian's real `docker-registry` on loopback: round trip, skipping, auth, tokens.

Needs the Debian packages `docker-registry` (the registry) and `apache2-utils`
(`htpasswd`, for the registry's password file). The harness here (the
registry process, a counting proxy, a fake registry for hostile answers) is
shared by the other registry tests.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import http.client
import http.server
import json
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ollama_py import settings as settings_module
from ollama_py.engine.runner import Runner, RunnerOptions
from ollama_py.engine.types import GenerationRequest, Sampling
from ollama_py.llama.model import Model
from ollama_py.settings import Settings
from ollama_py.store import create, names, registry
from ollama_py.store.create import ProgressUpdate
from ollama_py.store.manifests import MEDIA_MODEL, Store
from ollama_py.store.modelfile import Modelfile
from ollama_py.store.registry import RegistryError

USER, PASSWORD = "alice", "s3cret-Pa55word"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str) -> None:
    """Polls until the server answers; startup takes a moment, and a server that never starts fails here."""
    for _ in range(200):
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection(url, timeout=2)
            conn.request("GET", "/v2/")
            if conn.getresponse().status in (200, 401):
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} did not start")


class RegistryProcess:
    """`docker-registry serve` on a free loopback port with its own storage, optionally behind htpasswd."""

    def __init__(self, root: Path, *, users: dict[str, str] | None = None) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail("docker-registry is not installed: apt-get install docker-registry apache2-utils")
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
        wait_until_up(self.host)

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (its filesystem driver's layout)."""
        hex_ = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


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
    /token, for `USER` and `PASSWORD`).
    """

    def __init__(self, upstream: str, *, fail_from: int | None = None, slow_from: int | None = None,
                 delay: float = 0.05, token: str | None = None) -> None:
        self.upstream = upstream
        self.fail_from = fail_from
        self.slow_from = slow_from
        self.delay = delay
        self.token = token
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
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
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


def isolated_settings(root: Path, **overrides: object) -> Settings:
    """Settings for a store under `root` that ignore the user's own credentials."""
    isolated: dict[str, object] = {"models": root, "noprune": False, "registry_credentials": "",
                                   "registry_auth": root / "no-credentials.json"}
    return dataclasses.replace(settings_module.load(), **{**isolated, **overrides})  # type: ignore[arg-type]


def answer(path: Path, question: str) -> str:
    """The model's greedy answer to one question: proof that a pulled model runs."""

    async def ask() -> str:
        with Model(path) as model:
            runner = Runner(model, RunnerOptions(num_ctx=256, num_parallel=1, num_batch=64))
            try:
                prompt = tuple(model.vocab.tokenize(
                    f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n", parse_special=True))
                request = GenerationRequest(id="q", prompt=prompt, sampling=Sampling(temperature=0, num_predict=12))
                async with contextlib.aclosing(runner.submit(request)) as events:
                    return "".join([event.text async for event in events])
            finally:
                runner.close()

    return asyncio.run(ask())


def statuses(updates: list[ProgressUpdate]) -> list[str]:
    """Progress statuses in order, repeats folded, as a progress bar shows them."""
    out: list[str] = []
    for update in updates:
        if not out or out[-1] != update.status:
            out.append(update.status)
    return out


def model_digest(store: Store, name: names.ModelName) -> str:
    layer = store.read(name).layer(MEDIA_MODEL)
    assert layer is not None
    return layer.digest


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> tuple[Store, Settings]:
    """A store holding smollm2:135m, imported from the real GGUF: the model the tests push."""
    root = tmp_path_factory.mktemp("source")
    s = isolated_settings(root)
    store = Store.from_settings(s)
    create.import_default(store, s)
    return store, s


@pytest.fixture
def empty(tmp_path: Path) -> tuple[Store, Settings]:
    root = tmp_path / "store"
    s = isolated_settings(root)
    return Store.from_settings(s), s


def push_default(source: tuple[Store, Settings], host: str, *, settings: Settings | None = None,
                 progress: Callable[[ProgressUpdate], None] | None = None) -> names.ModelName:
    """Pushes smollm2:135m as host/library/smollm2:135m; returns that name."""
    store, s = source
    name = names.parse(f"{host}/library/smollm2:135m")
    store.copy(names.parse("smollm2:135m"), name)
    registry.push(store, name, settings=settings or s, insecure=True, progress=progress)
    return name


def test_push_then_pull_gives_the_same_model_and_it_runs(tmp_path: Path, source: tuple[Store, Settings],
                                                         empty: tuple[Store, Settings]) -> None:
    store, _ = source
    with running_registry(tmp_path / "registry") as reg:
        pushed: list[ProgressUpdate] = []
        name = push_default(source, reg.host, progress=pushed.append)
        digest = model_digest(store, name)
        size = store.blobs.size(digest)
        assert statuses(pushed)[0] == "retrieving manifest"
        assert f"pushing {digest[7:19]}" in statuses(pushed)
        assert statuses(pushed)[-2:] == ["pushing manifest", "success"]
        assert [(u.completed, u.total) for u in pushed if u.digest == digest][-1] == (size, size)

        local, s = empty
        pulled: list[ProgressUpdate] = []
        assert registry.pull(local, name, settings=s, insecure=True, progress=pulled.append) == name
        assert statuses(pulled)[0] == "pulling manifest"
        assert statuses(pulled)[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        assert [u.completed for u in pulled if u.digest == digest][-1] == size

        assert local.read_bytes(name) == store.read_bytes(name)
        for blob in store.read(name).digests():
            assert local.blobs.path(blob).read_bytes() == store.blobs.path(blob).read_bytes()
        assert sorted(local.blobs.root.iterdir()) == sorted(local.blobs.path(d) for d in local.read(name).digests())
        assert "Paris" in answer(local.blobs.path(digest), "What is the capital of France?")


def test_pull_skips_blobs_already_in_the_store(tmp_path: Path, source: tuple[Store, Settings],
                                               empty: tuple[Store, Settings]) -> None:
    with running_registry(tmp_path / "registry") as reg:
        name = push_default(source, reg.host)
        proxy = Proxy(reg.host)
        try:
            local, s = empty
            via_proxy = names.parse(f"{proxy.host}/library/smollm2:135m")
            registry.pull(local, via_proxy, settings=s, insecure=True)
            first = sum(proxy.blob_bytes.values())
            blobs = len(local.read(via_proxy).digests())
            # Each blob once, and a one-byte range probe per blob (two for the large one, hf_transfer's own).
            assert 0 <= first - local.read(via_proxy).size <= blobs + 1
            again: list[ProgressUpdate] = []
            registry.pull(local, via_proxy, settings=s, insecure=True, progress=again.append)
            assert sum(proxy.blob_bytes.values()) == first
            assert "verifying sha256 digest" in statuses(again) and statuses(again)[-1] == "success"
        finally:
            proxy.close()
        assert local.read_bytes(via_proxy) == source[0].read_bytes(name)


def test_pull_of_a_changed_tag_removes_the_layers_only_the_old_one_used(
        tmp_path: Path, source: tuple[Store, Settings], empty: tuple[Store, Settings]) -> None:
    store, s = source
    with running_registry(tmp_path / "registry") as reg:
        name = push_default(source, reg.host)
        local, ls = empty
        registry.pull(local, name, settings=ls, insecure=True)
        old = local.read(name).digests()
        create.create(store, name, Modelfile(from_="smollm2:135m", system="You answer in one word."),
                      base_dir=tmp_path)
        registry.push(store, name, settings=s, insecure=True)
        updates: list[ProgressUpdate] = []
        registry.pull(local, name, settings=ls, insecure=True, progress=updates.append)
        assert statuses(updates)[-3:] == ["writing manifest", "removing unused layers", "success"]
        new = local.read(name).digests()
        assert set(local.blobs.digests()) == new
        assert model_digest(local, name) in old & new


def test_unknown_model_is_404_and_writes_nothing(tmp_path: Path, empty: tuple[Store, Settings]) -> None:
    local, s = empty
    with running_registry(tmp_path / "registry") as reg:
        with pytest.raises(RegistryError) as err:
            registry.pull(local, names.parse(f"{reg.host}/library/missing:latest"), settings=s, insecure=True)
    assert err.value.status == 404
    assert "not found" in str(err.value)
    assert local.models() == []


# -- authentication --------------------------------------------------------------


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with running_registry(tmp_path_factory.mktemp("private"), users={USER: PASSWORD}) as reg:
        yield reg


def test_htpasswd_registry_round_trip_with_credentials(private_registry: RegistryProcess,
                                                       source: tuple[Store, Settings], empty: tuple[Store, Settings],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store, s = source
    with_credentials = dataclasses.replace(s, registry_credentials=f"{private_registry.host}={USER}:{PASSWORD}")
    name = push_default(source, private_registry.host, settings=with_credentials)

    local, ls = empty
    # The credentials file, in the format `docker login` writes, works as well as the variable.
    auth_file = ls.models.parent / "docker-config.json"
    auth_file.write_text(json.dumps({"auths": {private_registry.host: {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    registry.pull(local, name, settings=dataclasses.replace(ls, registry_auth=auth_file), insecure=True)
    assert local.read_bytes(name) == store.read_bytes(name)
    assert PASSWORD not in caplog.text
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in caplog.text


def test_htpasswd_registry_refuses_cleanly_without_credentials(private_registry: RegistryProcess,
                                                               source: tuple[Store, Settings],
                                                               empty: tuple[Store, Settings]) -> None:
    store, s = source
    name = names.parse(f"{private_registry.host}/library/smollm2:135m")
    store.copy(names.parse("smollm2:135m"), name)
    local, ls = empty
    for settings, expected in [(ls, "needs credentials"),
                               (dataclasses.replace(ls, registry_credentials=f"{private_registry.host}={USER}:wrong"),
                                f"refused the credentials for user '{USER}'")]:
        with pytest.raises(RegistryError) as pulling:
            registry.pull(local, name, settings=settings, insecure=True)
        assert pulling.value.status == 401
        assert expected in str(pulling.value)
        with pytest.raises(RegistryError) as pushing:
            registry.push(store, name, settings=dataclasses.replace(s, registry_credentials=settings.registry_credentials),
                          insecure=True)
        assert pushing.value.status == 401
        assert "wrong" not in str(pulling.value) + str(pushing.value)
    assert local.models() == []
    assert not local.blobs.root.exists() or list(local.blobs.root.iterdir()) == []


def test_bearer_token_from_the_registrys_own_realm(tmp_path: Path, source: tuple[Store, Settings],
                                                   empty: tuple[Store, Settings]) -> None:
    store, s = source
    with running_registry(tmp_path / "registry") as reg:
        proxy = Proxy(reg.host, token="t0ken")
        try:
            name = names.parse(f"{proxy.host}/library/smollm2:135m")
            creds = dataclasses.replace(s, registry_credentials=f"{proxy.host}={USER}:{PASSWORD}")
            store.copy(names.parse("smollm2:135m"), name)
            registry.push(store, name, settings=creds, insecure=True)
            local, ls = empty
            registry.pull(local, name, settings=dataclasses.replace(ls, registry_credentials=creds.registry_credentials),
                          insecure=True)
            assert local.read_bytes(name) == store.read_bytes(name)
            assert proxy.token_requests >= 2  # one for the push, one for the pull
        finally:
            proxy.close()


def test_token_realm_on_another_host_is_refused(empty: tuple[Store, Settings]) -> None:
    token_server = FakeRegistry({"/token": (200, {}, b'{"token": "stolen"}')}, host="127.0.0.2")
    challenge = {"WWW-Authenticate": f'Bearer realm="http://{token_server.host}/token",service="x",scope="y"'}
    fake = FakeRegistry({"/v2/library/m/manifests/latest": (401, challenge, b"")})
    local, s = empty
    try:
        with pytest.raises(RegistryError) as err:
            registry.pull(local, names.parse(f"{fake.host}/library/m:latest"),
                          settings=dataclasses.replace(s, registry_credentials=f"{fake.host}={USER}:{PASSWORD}"),
                          insecure=True)
    finally:
        fake.close()
        token_server.close()
    assert "realm host '127.0.0.2' does not match original host '127.0.0.1'" in str(err.value)
    assert token_server.requests == []
    assert PASSWORD not in str(err.value)


def test_credentials_file_entries(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://registry.example.com": {"auth": base64.b64encode(b"bob:pw:with:colons").decode()},
        "other.example.com:5000": {"username": "carol", "password": "x"},
        "broken.example.com": {"auth": "%%%"}}}))
    s = isolated_settings(tmp_path, registry_auth=path)
    assert registry.credentials(s, "registry.example.com") == ("bob", "pw:with:colons")
    assert registry.credentials(s, "other.example.com:5000") == ("carol", "x")
    assert registry.credentials(s, "broken.example.com") is None
    assert registry.credentials(s, "elsewhere.example.com") is None
    assert registry.credentials(dataclasses.replace(s, registry_credentials="elsewhere.example.com=dan:y"),
                                "elsewhere.example.com") == ("dan", "y")
    path.write_text("{not json")
    assert registry.credentials(s, "registry.example.com") is None


def test_settings_hide_secrets() -> None:
    loaded = settings_module.load({"OLLAMA_PY_REGISTRY_CREDENTIALS": f"host={USER}:{PASSWORD}", "HF_TOKEN": "hf_x"})
    assert PASSWORD not in repr(loaded) and "hf_x" not in repr(loaded)
    with pytest.raises(settings_module.SettingsError) as err:
        settings_module.load({"OLLAMA_PY_REGISTRY_CREDENTIALS": PASSWORD})
    assert PASSWORD not in str(err.value)


def wait_for(condition: Callable[[], bool]) -> None:
    """Polls a condition another thread makes true; the test fails if it never does."""
    for _ in range(600):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition never became true")
