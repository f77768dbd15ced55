"""The store holds only what it owns, a full disk is a 507, and the listing routes answer whatever the rest does.

Against the real server on loopback and the real store: symlinks that lead out
of OLLAMA_MODELS, /api/show racing a delete, a second server starting on a store
while the first takes an upload, a small tmpfs filled to the last byte, browser
origins, and /api/tags while the shared worker threads are all busy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ollama_py import settings
from ollama_py.server import models, routes_models
from ollama_py.server.middleware import DEFAULT_ORIGINS, Cors
from ollama_py.store import names, transfer
from ollama_py.store.blobs import OutsideStoreError
from ollama_py.store.manifests import ModelNotFoundError, Store
from tests.server_harness import (
    GUARD,
    MODEL,
    LiveServer,
    live_server,
    server_settings,
    start_serve,
    wait_for,
)
from tests.test_registry_harness import FakeRegistry, free_port

LIBRARY = Path("manifests/registry.ollama.ai/library")
HOURS_AGO = time.time() - 2 * 3600


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextmanager
def link(path: Path, target: Path | str) -> Iterator[Path]:
    """A symlink put into the module's store for one test, and taken out again."""
    path.symlink_to(target)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


# ---- symlinks out of OLLAMA_MODELS ---------------------------------------------------


def test_a_symlink_out_of_the_store_is_never_read_written_or_deleted_through(
        server: LiveServer, http: httpx.Client, tmp_path: Path) -> None:
    root = server.store.root
    outside = tmp_path / "outside"
    outside.mkdir()
    real = root / LIBRARY / "smollm2" / "135m"
    shutil.copy(real, outside / "latest")  # a valid manifest: a store that followed the link would serve it
    bait = tmp_path / "bait"
    bait.write_bytes(b"not the store's")
    foreign = tmp_path / "foreign-host"
    foreign.mkdir()

    with link(root / LIBRARY / "escape", outside), link(root / "manifests" / "evil.example", foreign), \
            link(root / LIBRARY / "smollm2" / "bait", bait):
        assert "escape:latest" not in {m["name"] for m in http.get("/api/tags").json()["models"]}
        assert http.post("/api/show", json={"model": "escape"}).status_code == 404
        assert http.post("/api/generate", json={"model": "escape", "prompt": "Hi"}).status_code == 404
        assert http.request("DELETE", "/api/delete", json={"model": "escape"}).status_code == 404
        assert http.request("DELETE", "/api/delete", json={"model": "smollm2:bait"}).status_code == 404
        copied = http.post("/api/copy", json={"source": MODEL, "destination": "escape:copy"})
        assert copied.status_code == 403 and "OLLAMA_MODELS" in copied.json()["error"]
        foreign_copy = http.post("/api/copy", json={"source": MODEL, "destination": "evil.example/ns/m:t"})
        assert foreign_copy.status_code == 403
        assert sorted(p.name for p in outside.iterdir()) == ["latest"]
        assert (outside / "latest").read_bytes() == real.read_bytes()
        assert bait.read_bytes() == b"not the store's"
        assert list(foreign.iterdir()) == []  # not even a folder made through the link

    # A blob that is a link out of the store is not a blob of the store.
    digest = sha256(bait.read_bytes())
    with link(server.store.blobs.root / f"sha256-{digest[7:]}", bait):
        assert http.head(f"/api/blobs/{digest}").status_code == 404
        with pytest.raises(OutsideStoreError):
            server.store.blobs.path(digest)
        assert server.store.blobs.remove([digest]) == [digest]  # the link goes, its target stays
    assert bait.read_bytes() == b"not the store's"


def test_a_blobs_folder_that_leads_out_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "store"
    root.mkdir()
    (root / "blobs").symlink_to(elsewhere)
    store = Store(root)
    with pytest.raises(OutsideStoreError):
        store.blobs.write_bytes(b"config")
    assert list(elsewhere.iterdir()) == []


# ---- /api/show never hangs ----------------------------------------------------------


def test_show_answers_for_a_linked_folder_and_while_racing_a_delete(server: LiveServer, http: httpx.Client) -> None:
    store = server.store
    with link(store.root / LIBRARY / "alias", "smollm2"):  # a symlink that stays inside the store
        shown = http.post("/api/show", json={"model": "alias:135m"})
        assert shown.status_code == 200 and shown.json()["modified_at"]

    # Removed between the model's resolution and its show: a 404, not a request that never ends.
    store.copy(names.parse(MODEL), names.parse("racer"))
    resolved = models.resolve(store, server.settings, "racer")
    store.delete(names.parse("racer"))
    with pytest.raises(ModelNotFoundError):
        routes_models._show(store, resolved, False)

    def show() -> int:
        return http.post("/api/show", json={"model": "racer"}).status_code

    with ThreadPoolExecutor(4) as pool:
        for _ in range(8):
            store.copy(names.parse(MODEL), names.parse("racer"))
            answers = [pool.submit(show) for _ in range(3)]
            deleted = pool.submit(lambda: http.request("DELETE", "/api/delete", json={"model": "racer"}))
            assert deleted.result().status_code == 200
            assert {a.result() for a in answers} <= {200, 404}


# ---- two servers on one store -------------------------------------------------------


def serve(root: Path, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environ = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(root),
               "OLLAMA_PY_CACHE": str(settings.load().cache), **env}
    environ.pop("OLLAMA_NOPRUNE", None)
    return start_serve(environ, log, "the second server")


def test_a_second_server_starting_on_the_store_keeps_the_first_ones_upload(tmp_path: Path) -> None:
    root = tmp_path / "store"
    cache = settings.load().cache
    body = os.urandom(3 << 20)
    digest = sha256(body)
    with live_server(server_settings(root, cache, noprune=False), Store(root)) as first:
        blobs = first.store.blobs.root
        old_leftover, unused = blobs / ".partial-dead", sha256(b"unused")
        first.store.blobs.write_bytes(b"unused")
        old_leftover.write_bytes(b"a writer killed long ago")

        with socket.create_connection(("127.0.0.1", first.port), timeout=GUARD) as upload:
            upload.sendall(f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
            wait_for(lambda: any(p.name.startswith(".partial-") and p != old_leftover for p in blobs.iterdir()),
                     "the first server began writing the upload")
            in_flight = {p for p in blobs.iterdir() if p.name.startswith(".partial-")} - {old_leftover}
            for path in (*in_flight, old_leftover):  # as old as each other: only the writer's lock tells them apart
                os.utime(path, (HOURS_AGO, HOURS_AGO))

            # No grace: its start-up prune, done before it answers, goes by the locks alone.
            second, _ = serve(root, tmp_path / "second.log", OLLAMA_PY_PRUNE_GRACE="0")
            try:
                assert b"pruned 1 unused blobs" in (tmp_path / "second.log").read_bytes()
                assert all(p.exists() for p in in_flight), "the second server deleted an upload in progress"
                assert not old_leftover.exists() and not first.store.blobs.exists(unused)

                upload.sendall(body[len(body) // 2:])
                reply = upload.recv(4096).decode()
            finally:
                second.terminate()
                assert second.wait(GUARD) == 0
        assert reply.startswith("HTTP/1.1 201"), reply
        assert first.store.blobs.verify(digest)


def test_prune_keeps_unused_blobs_younger_than_its_grace(tmp_path: Path) -> None:
    """A blob uploaded for a create that has not come yet is unused, and not garbage."""
    store = Store(tmp_path, prune_grace=settings.Settings().prune_grace)
    old, new = store.blobs.write_bytes(b"old"), store.blobs.write_bytes(b"new")
    os.utime(store.blobs.path(old), (HOURS_AGO, HOURS_AGO))
    assert store.prune() == [old]
    assert store.blobs.exists(new)


# ---- a full disk --------------------------------------------------------------------


@contextmanager
def small_disk(folder: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of its own, so that filling it fills nothing else (mounting needs root, as CI has)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small filesystem, and mounting a tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Writes a file until the filesystem has no byte left."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def no_leftovers(root: Path) -> bool:
    return not [p for p in root.rglob(".partial-*")]


def test_a_full_disk_is_507_and_leaves_nothing_half_written(tmp_path: Path, model_path: Path) -> None:
    cache = settings.load().cache
    with small_disk(tmp_path / "disk", model_path.stat().st_size // (1 << 20) + 16) as root:
        store = Store(root, noprune=True)
        weights = store.blobs.write_file(model_path)
        layer = os.urandom(4 << 20)
        config = b"{}"
        registry = FakeRegistry({
            "/v2/library/big/manifests/latest": (200, {"Content-Type": "application/vnd.docker.distribution."
                                                       "manifest.v2+json"}, json.dumps({
                "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": sha256(config), "size": len(config)},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": sha256(layer),
                            "size": len(layer)}]}).encode()),
            f"/v2/library/big/blobs/{sha256(config)}": (200, {}, config),
            f"/v2/library/big/blobs/{sha256(layer)}": (200, {}, layer)})
        try:
            with live_server(server_settings(root, cache), store) as live, live.client() as http:
                filler = fill(root)
                created = http.post("/api/create", json={"model": "full", "files": {"model.gguf": weights},
                                                         "system": "On a full disk.", "stream": False})
                assert created.status_code == 507 and "disk space" in created.json()["error"]
                assert store.resolve(names.parse("full")) is None

                upload = os.urandom(1 << 20)
                uploaded = http.post(f"/api/blobs/{sha256(upload)}", content=upload)
                assert uploaded.status_code == 507 and "disk space" in uploaded.json()["error"]
                assert not store.blobs.exists(sha256(upload))

                pulled = http.post("/api/pull", json={"model": f"{registry.host}/library/big", "insecure": True,
                                                      "stream": False})
                assert pulled.status_code == 507 and "disk space" in pulled.json()["error"]
                assert store.resolve(names.parse(f"{registry.host}/library/big")) is None
                assert no_leftovers(root)

                filler.unlink()  # room again: the same requests succeed
                assert http.post(f"/api/blobs/{sha256(upload)}", content=upload).status_code == 201
                assert http.post("/api/create", json={"model": "full", "files": {"model.gguf": weights},
                                                      "stream": False}).status_code == 200
        finally:
            registry.close()


def test_a_download_that_fills_the_disk_is_507_and_never_installed(tmp_path: Path) -> None:
    """The pull's space check passed, then the disk filled (another writer): the download itself says so."""
    data = os.urandom(6 << 20)
    digest = sha256(data)
    registry = FakeRegistry({"/blob": (200, {}, data)})
    try:
        with small_disk(tmp_path / "disk", 4) as root:
            store = Store(root)
            source = transfer.Source(f"http://{registry.host}/blob", ranges=False)
            with pytest.raises(transfer.RegistryError) as failed:
                transfer.fetch(store.blobs, digest, len(data), lambda: source)
            assert failed.value.status == 507
            assert not store.blobs.exists(digest)
    finally:
        registry.close()


# ---- browser origins ----------------------------------------------------------------


def test_a_port_wildcard_matches_a_port_only(http: httpx.Client) -> None:
    refused = http.get("/api/version", headers={"Origin": "http://localhost:1234.evil.example"})
    assert refused.status_code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    cors = Cors(())
    for pattern in DEFAULT_ORIGINS:
        scheme, _, rest = pattern.partition("://")
        host = rest.removesuffix(":*")
        if rest.endswith(":*"):
            assert cors.allowed(f"{scheme}://{host}:8080")
            for trick in (":1234.evil.example", ":80@evil.example", ":", ":80/path", ".evil.example:80"):
                assert not cors.allowed(f"{scheme}://{host}{trick}"), f"{pattern} allows {host}{trick}"
        elif host != "*":
            assert cors.allowed(pattern) and not cors.allowed(f"{pattern}.evil.example")
    assert Cors(("https://*.example.com",)).allowed("https://app.example.com")
    assert not Cors(("https://*.example.com",)).allowed("https://example.com.evil.net")
    assert not Cors(("https://*.example.com",)).allowed("https://evil.net/.example.com")
    assert Cors(("*",)).allowed("https://anyone.example")


# ---- listing while the shared threads are busy --------------------------------------


def test_listing_routes_answer_while_the_shared_threads_are_all_busy(server: LiveServer, http: httpx.Client) -> None:
    http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                     "options": {"num_predict": 1}})  # a loaded model for /api/ps to list
    routes = [("GET", "/api/tags", None), ("GET", "/api/ps", None), ("POST", "/api/show", {"model": MODEL}),
              ("GET", "/api/version", None), ("GET", "/metrics", None)]

    def latencies() -> list[float]:
        took = []
        for method, path, body in routes * 3:
            start = time.perf_counter()
            assert http.request(method, path, json=body).status_code == 200
            took.append(time.perf_counter() - start)
        return took

    unloaded = statistics.median(latencies())
    release, probe = threading.Event(), threading.Event()

    async def saturate() -> None:
        """Every thread of the loop's shared executor blocked, as generation work can block them, and one more
        call queued behind them: it runs only once a thread is free."""
        loop = asyncio.get_running_loop()
        workers = min(32, (os.cpu_count() or 1) + 4)  # the default executor's size
        for _ in range(workers + 4):
            loop.run_in_executor(None, release.wait, GUARD)
        loop.run_in_executor(None, probe.set)

    asyncio.run_coroutine_threadsafe(saturate(), server.loop).result(GUARD)
    try:
        loaded = statistics.median(latencies())
        assert not probe.is_set(), "the shared threads were not all busy while the listing routes answered"
    finally:
        release.set()
    assert loaded < 10 * unloaded, f"median {loaded:.4f}s while saturated, {unloaded:.4f}s before"
