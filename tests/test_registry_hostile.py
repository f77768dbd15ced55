"""A registry's answers are untrusted: bad manifests are refused before any path is built, lying sizes before a
byte is written, and bytes that do not match their digest never enter the store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ollama_py.settings import Settings
from ollama_py.store import names, registry, transfer
from ollama_py.store.manifests import MAX_MANIFEST_BYTES, MEDIA_CONFIG, MEDIA_MANIFEST, MEDIA_MODEL, Store
from ollama_py.store.registry import RegistryError
from tests.test_registry import empty, model_digest, push_default, source  # noqa: F401 (fixtures)
from tests.test_registry_harness import FakeRegistry, running_registry

CONFIG = b'{"model_format":"gguf","model_family":"llama"}'
WEIGHTS = b"GGUF" + bytes(range(256)) * 64


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(layers: list[dict[str, object]], *, config: dict[str, object] | None = None) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": config or {"mediaType": MEDIA_CONFIG, "digest": digest_of(CONFIG), "size": len(CONFIG)},
        "layers": layers}).encode()


def layer(digest: str, size: int) -> dict[str, object]:
    return {"mediaType": MEDIA_MODEL, "digest": digest, "size": size}


def serve(manifest_bytes: bytes, blobs: dict[str, bytes]) -> FakeRegistry:
    routes = {"/v2/library/evil/manifests/latest": (200, {"Content-Type": MEDIA_MANIFEST}, manifest_bytes)}
    routes |= {f"/v2/library/evil/blobs/{d}": (200, {}, data) for d, data in blobs.items()}
    return FakeRegistry(routes)


def pull_from(fake: FakeRegistry, store: Store, s: Settings) -> RegistryError:
    try:
        with pytest.raises(RegistryError) as err:
            registry.pull(store, names.parse(f"{fake.host}/library/evil:latest"), settings=s, insecure=True)
    finally:
        fake.close()
    return err.value


def files_in(store: Store) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()] if store.root.exists() else []


GOOD = layer(digest_of(WEIGHTS), len(WEIGHTS))
HEX = "a" * 64


@pytest.mark.parametrize("bad", [
    pytest.param(manifest([layer("sha256:../../../../etc/passwd", 10)]), id="traversal"),
    pytest.param(manifest([layer(f"sha256:../../{HEX[6:]}", 10)]), id="traversal-64-chars"),
    pytest.param(manifest([layer("sha256:" + HEX.upper(), 10)]), id="uppercase-hex"),
    pytest.param(manifest([layer("sha256:" + HEX[1:], 10)]), id="short-digest"),
    pytest.param(manifest([layer(f"sha256:{HEX}\n", 10)]), id="trailing-newline"),
    pytest.param(manifest([layer("sha512:" + HEX * 2, 10)]), id="other-algorithm"),
    pytest.param(manifest([layer(digest_of(WEIGHTS), -1)]), id="negative-size"),
    pytest.param(manifest([GOOD, layer(digest_of(WEIGHTS), len(WEIGHTS) + 1)]), id="one-digest-two-sizes"),
    pytest.param(manifest([GOOD], config={"mediaType": MEDIA_CONFIG, "digest": digest_of(CONFIG), "size": 1 << 40}),
                 id="huge-config"),
    pytest.param(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2"
                             "+json", "manifests": []}).encode(), id="manifest-list"),
    pytest.param(b"<html>not a manifest</html>", id="not-json"),
    pytest.param(b" " * (MAX_MANIFEST_BYTES + 1), id="too-large"),
])
def test_hostile_manifest_is_refused_before_anything_is_fetched_or_written(bad: bytes,
                                                                          empty: tuple[Store, Settings]) -> None:
    store, s = empty
    fake = serve(bad, {digest_of(CONFIG): CONFIG, digest_of(WEIGHTS): WEIGHTS})
    error = pull_from(fake, store, s)
    assert error.status == 502
    assert fake.requests == ["/v2/library/evil/manifests/latest"]
    assert files_in(store) == []
    assert not Path("/etc/passwd-partial").exists()


@pytest.mark.parametrize("announced", [len(WEIGHTS) + 100, len(WEIGHTS) - 1], ids=["larger", "smaller"])
def test_layer_size_that_lies_is_refused_before_a_byte_is_written(announced: int,
                                                                  empty: tuple[Store, Settings]) -> None:
    store, s = empty
    fake = serve(manifest([layer(digest_of(WEIGHTS), announced)]),
                 {digest_of(CONFIG): CONFIG, digest_of(WEIGHTS): WEIGHTS})
    error = pull_from(fake, store, s)
    assert f"{len(WEIGHTS)} bytes, but {announced} were announced" in str(error)
    assert files_in(store) == []


def test_blob_whose_bytes_do_not_match_its_digest_never_enters_the_store(empty: tuple[Store, Settings]) -> None:
    store, s = empty
    forged = WEIGHTS[:-1] + b"!"
    fake = serve(manifest([GOOD]), {digest_of(CONFIG): CONFIG, digest_of(WEIGHTS): forged})
    error = pull_from(fake, store, s)
    assert "digest mismatch" in str(error)
    assert store.models() == [] and list(store.blobs.digests()) == []
    assert not transfer.partial_path(store.blobs, digest_of(WEIGHTS)).exists()


def test_real_registry_serving_damaged_bytes_fails_the_pull_cleanly(tmp_path: Path, source: tuple[Store, Settings],
                                                                    empty: tuple[Store, Settings]) -> None:
    with running_registry(tmp_path / "registry") as reg:
        name = push_default(source, reg.host)
        digest = model_digest(source[0], name)
        stored = reg.blob_file(digest)
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one bit of rot in the registry's storage
        stored.write_bytes(bytes(data))
        store, s = empty
        with pytest.raises(RegistryError) as err:
            registry.pull(store, name, settings=s, insecure=True)
    assert f"digest mismatch for {digest}" in str(err.value)
    assert store.models() == [] and list(store.blobs.digests()) == []
    assert not transfer.partial_path(store.blobs, digest).exists()
