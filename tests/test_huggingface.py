"""hf.co/<user>/<repo>[:<quant>] pulls against a Hub on loopback that serves the real SmolLM2 GGUF.

The Hub here answers the two routes the code uses (the repository listing
and `resolve`, which redirects to a CDN on another loopback address that
serves byte ranges), optionally only to a token, and records what the CDN
was sent.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import re
import struct
import threading
from pathlib import Path

import pytest

from ollama_py.settings import Settings
from ollama_py.store import gguf, huggingface, names
from ollama_py.store.create import CHATML_STOP, CHATML_TEMPLATE, ProgressUpdate
from ollama_py.store.default_model import SMOLLM2_135M
from ollama_py.store.huggingface import RepoFile, choose
from ollama_py.store.manifests import MEDIA_MODEL, MEDIA_PARAMS, MEDIA_SYSTEM, MEDIA_TEMPLATE, Store
from ollama_py.store.registry import RegistryError
from tests.test_registry import answer, empty, isolated_settings, statuses  # noqa: F401 (fixture)

TOKEN = "hf_s3cret_t0ken"
REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Hub:
    """The Hub's listing and resolve routes on 127.0.0.1, and its CDN, serving ranges, on 127.0.0.2."""

    def __init__(self, repos: dict[str, dict[str, Path]], *, token: str | None = None) -> None:
        self.token = token
        self.files = {repo: {name: (path, sha256(path)) for name, path in files.items()}
                      for repo, files in repos.items()}
        self.by_sha = {sha: path for files in self.files.values() for path, sha in files.values()}
        self.cdn_authorization: list[str] = []
        self.cdn_bytes = 0
        self.lock = threading.Lock()
        self.cdn = self._serve("127.0.0.2", self._cdn)
        self.hub = self._serve("127.0.0.1", self._hub)
        self.endpoint = f"http://127.0.0.1:{self.hub.server_address[1]}"

    def _serve(self, host: str, route: object) -> http.server.ThreadingHTTPServer:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                route(self)  # type: ignore[operator]

            do_HEAD = do_GET

        server = http.server.ThreadingHTTPServer((host, 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def close(self) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    @staticmethod
    def _answer(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
                headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command == "GET":
            h.wfile.write(body)

    def _hub(self, h: http.server.BaseHTTPRequestHandler) -> None:
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            self._answer(h, 401, b'{"error":"Access to model is restricted"}')
            return
        path = h.path.split("?")[0]
        if m := re.fullmatch(r"/api/models/(.+)", path):
            files = self.files.get(m[1])
            if files is None:
                self._answer(h, 404, b'{"error":"Repository not found"}')
                return
            siblings = [{"rfilename": name, "size": p.stat().st_size, "lfs": {"sha256": sha, "size": p.stat().st_size}}
                        for name, (p, sha) in files.items() if name.endswith(".gguf")]
            siblings.append({"rfilename": "README.md", "size": 10})
            self._answer(h, 200, json.dumps({"id": m[1], "sha": "0123abcd", "siblings": siblings}).encode())
        elif (m := re.fullmatch(r"/(.+?/.+?)/resolve/0123abcd/(.+)", path)) and m[2] in self.files.get(m[1], {}):
            cdn = f"http://127.0.0.2:{self.cdn.server_address[1]}/xet/{self.files[m[1]][m[2]][1]}?sig=signed"
            self._answer(h, 302, headers={"Location": cdn})
        else:
            self._answer(h, 404, b'{"error":"Entry not found"}')

    def _cdn(self, h: http.server.BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.cdn_authorization.append(h.headers.get("Authorization", ""))
        path = self.by_sha.get(h.path.split("?")[0].rpartition("/")[2])
        if path is None:
            self._answer(h, 404)
            return
        size = path.stat().st_size
        first, last = 0, size - 1
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", "")):
            first, last = int(m[1]), min(int(m[2] or size - 1), size - 1)
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(last - first + 1))
        h.end_headers()
        if h.command == "HEAD":
            return
        with path.open("rb") as f:
            f.seek(first)
            left = last - first + 1
            while left:
                block = f.read(min(left, 1 << 20))
                h.wfile.write(block)
                left -= len(block)
                with self.lock:
                    self.cdn_bytes += len(block)


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> dict[str, Path]:
    """The repository: the real Q4_1 file, and two quantisations that are only listed (never downloaded)."""
    folder = tmp_path_factory.mktemp("repo")
    for quant in ("Q8_0", "F16"):
        (folder / f"{quant}.gguf").write_bytes(b"GGUF not this one " + quant.encode())
    return {"SmolLM2-135M-Instruct-Q4_1.gguf": model_path,
            "SmolLM2-135M-Instruct-Q8_0.gguf": folder / "Q8_0.gguf",
            "SmolLM2-135M-Instruct-F16.gguf": folder / "F16.gguf"}


def hub_settings(store: tuple[Store, Settings], hub: Hub, token: str = "") -> Settings:
    return isolated_settings(store[1].models, hf_endpoint=hub.endpoint, hf_token=token)


def test_pull_creates_the_model_from_the_gguf_and_it_answers(repo_files: dict[str, Path],
                                                            empty: tuple[Store, Settings]) -> None:
    store, _ = empty
    hub = Hub({REPO: repo_files})
    try:
        s = hub_settings(empty, hub)
        updates: list[ProgressUpdate] = []
        name = huggingface.pull(store, names.parse(f"hf.co/{REPO}"), settings=s, progress=updates.append)
        downloaded = hub.cdn_bytes
        again = huggingface.pull(store, names.parse(f"hf.co/{REPO}:q4_1"), settings=s)
    finally:
        hub.close()
    digest = "sha256:" + SMOLLM2_135M.gguf_sha256
    assert name == names.parse(f"hf.co/{REPO}:latest")
    assert statuses(updates) == ["pulling manifest", f"pulling {digest[7:19]}", "verifying sha256 digest",
                                 "writing manifest", "success"]
    assert 0 <= downloaded - repo_files["SmolLM2-135M-Instruct-Q4_1.gguf"].stat().st_size <= 2
    assert hub.cdn_bytes == downloaded  # the second tag found the blob in the store
    for pulled in (name, again):
        manifest = store.read(pulled)
        assert manifest.layer(MEDIA_MODEL).digest == digest  # type: ignore[union-attr]
        assert store.text(manifest.layer(MEDIA_TEMPLATE)) == CHATML_TEMPLATE  # type: ignore[arg-type]
        assert store.text(manifest.layer(MEDIA_SYSTEM)) == SMOLLM_SYSTEM  # type: ignore[arg-type]
        assert json.loads(store.text(manifest.layer(MEDIA_PARAMS))) == {"stop": CHATML_STOP}  # type: ignore[arg-type]
    assert store.config(store.read(name)).file_type == "Q4_1"
    assert "Paris" in answer(store.blobs.path(digest), "What is the capital of France?")


def test_quantisation_not_in_the_repository_is_404_naming_those_that_are(repo_files: dict[str, Path],
                                                                         empty: tuple[Store, Settings]) -> None:
    store, _ = empty
    hub = Hub({REPO: repo_files})
    try:
        with pytest.raises(RegistryError) as err:
            huggingface.pull(store, names.parse(f"hf.co/{REPO}:IQ2_XXS"), settings=hub_settings(empty, hub))
        with pytest.raises(RegistryError) as missing:
            huggingface.pull(store, names.parse("hf.co/nobody/nothing"), settings=hub_settings(empty, hub))
    finally:
        hub.close()
    assert err.value.status == 404
    assert "no GGUF file for 'IQ2_XXS'; available: F16, Q4_1, Q8_0" in str(err.value)
    assert missing.value.status == 404 and "repository nobody/nothing not found" in str(missing.value)
    assert hub.cdn_bytes == 0 and store.models() == []


def test_gated_repository_needs_the_token_which_never_reaches_the_cdn(
        repo_files: dict[str, Path], empty: tuple[Store, Settings], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store, _ = empty
    hub = Hub({REPO: repo_files}, token=TOKEN)
    try:
        with pytest.raises(RegistryError) as err:
            huggingface.pull(store, names.parse(f"hf.co/{REPO}"), settings=hub_settings(empty, hub))
        huggingface.pull(store, names.parse(f"hf.co/{REPO}"), settings=hub_settings(empty, hub, TOKEN))
    finally:
        hub.close()
    assert err.value.status == 401 and "set HF_TOKEN" in str(err.value)
    assert store.models()[0].name == names.parse(f"hf.co/{REPO}")
    assert hub.cdn_authorization and not any(hub.cdn_authorization)
    assert TOKEN not in caplog.text


def _kv(key: str, fmt: str, type_id: int, value: float) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", type_id) + struct.pack(fmt, value)


def split_gguf(src: Path, folder: Path, prefix: str, parts: int, extra: list[bytes]) -> list[Path]:
    """Splits a GGUF the way llama.cpp's gguf-split does; `extra` metadata entries go into the first part."""
    info = gguf.read(src, keep_array=0)
    raw = src.read_bytes()
    type_ids = {name: type_id for type_id, (name, _, _) in gguf.GGML_TYPES.items()}
    per_part = -(-len(info.tensors) // parts)
    paths = []
    for number in range(parts):
        tensors = info.tensors[number * per_part:(number + 1) * per_part]
        kvs = [raw[a:b] for a, b in info.spans.values()] + extra if number == 0 else []
        kvs += [_kv("split.no", "<H", 2, number), _kv("split.count", "<H", 2, parts),
                _kv("split.tensors.count", "<i", 5, len(info.tensors))]
        head = struct.pack("<4sIQQ", b"GGUF", 3, len(tensors), len(kvs)) + b"".join(kvs)
        data, infos = b"", b""
        for t in tensors:
            data += bytes(-len(data) % info.alignment)
            infos += struct.pack("<Q", len(t.name)) + t.name.encode() + struct.pack(
                f"<I{len(t.shape)}QIQ", len(t.shape), *t.shape, type_ids[t.type], len(data))
            data += raw[t.offset:t.offset + t.nbytes]
        head += infos
        path = folder / f"{prefix}-{number + 1:05d}-of-{parts:05d}.gguf"
        path.write_bytes(head + bytes(-len(head) % info.alignment) + data)
        paths.append(path)
    return paths


def test_split_gguf_is_merged_into_one_model_with_the_same_weights(tmp_path: Path, model_path: Path,
                                                                  empty: tuple[Store, Settings]) -> None:
    sampling = [_kv("general.sampling.temp", "<f", 6, 0.5), _kv("general.sampling.top_k", "<i", 5, 20)]
    parts = split_gguf(model_path, tmp_path, "SmolLM2-135M-Instruct-Q4_1", 3, sampling)
    repo = "someone/SmolLM2-split-GGUF"
    store, _ = empty
    hub = Hub({repo: {f"Q4_1/{p.name}": p for p in parts}})
    try:
        name = huggingface.pull(store, names.parse(f"hf.co/{repo}:Q4_1"), settings=hub_settings(empty, hub))
    finally:
        hub.close()
    manifest = store.read(name)
    merged = store.blobs.path(manifest.layer(MEDIA_MODEL).digest)  # type: ignore[union-attr]
    original, result = gguf.read(model_path), gguf.read(merged)
    assert [(t.name, t.shape, t.type) for t in result.tensors] == [(t.name, t.shape, t.type) for t in original.tensors]
    with model_path.open("rb") as a, merged.open("rb") as b:
        for t, u in zip(original.tensors, result.tensors, strict=True):
            a.seek(t.offset)
            b.seek(u.offset)
            assert a.read(t.nbytes) == b.read(u.nbytes), t.name
    assert not any(key.startswith("split.") for key in result.metadata)
    assert json.loads(store.text(manifest.layer(MEDIA_PARAMS))) == {  # type: ignore[arg-type]
        "temperature": 0.5, "top_k": 20, "stop": CHATML_STOP}
    assert sorted(store.blobs.digests()) == sorted(manifest.digests())  # the parts are gone
    assert answer(merged, "What is the capital of France?") == answer(model_path, "What is the capital of France?")


def files(*names_: str) -> list[RepoFile]:
    return [RepoFile(n, 1, huggingface.LfsInfo("a" * 64, 1)) for n in names_]


def test_choosing_the_file_for_a_tag() -> None:
    repo = files("m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "mmproj-m-F16.gguf", "m-IQ3_M.gguf")
    assert [f.rfilename for f in choose(repo, "latest", "r")] == ["m-Q4_K_M.gguf"]
    assert [f.rfilename for f in choose(repo, "q8_0", "r")] == ["m-Q8_0.gguf"]
    assert [f.rfilename for f in choose(repo, "m-IQ3_M.gguf", "r")] == ["m-IQ3_M.gguf"]
    # Without Q4_K_M, the closest in bits per weight; the projector is never the model.
    assert [f.rfilename for f in choose(repo[:1] + repo[2:], "latest", "r")] == ["m-Q4_K_S.gguf"]
    assert [f.rfilename for f in choose(files("m-Q5_K_M.gguf", "m-Q3_K_M.gguf"), "latest", "r")] == ["m-Q5_K_M.gguf"]
    split = files("Q6_K/m-Q6_K-00002-of-00002.gguf", "Q6_K/m-Q6_K-00001-of-00002.gguf", "m-Q2_K-00001-of-00002.gguf")
    assert [f.basename for f in choose(split, "latest", "r")] == ["m-Q6_K-00001-of-00002.gguf",
                                                                  "m-Q6_K-00002-of-00002.gguf"]
    assert [f.rfilename for f in choose(files("model.gguf"), "latest", "r")] == ["model.gguf"]
    with pytest.raises(RegistryError) as err:
        choose(files("config.json", "model.safetensors"), "latest", "r")
    assert err.value.status == 400

