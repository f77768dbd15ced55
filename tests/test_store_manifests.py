"""Manifests and the store: Ollama's layout read as it is, copy, remove with pruning."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ollama_py import settings
from ollama_py.store import names
from ollama_py.store.manifests import (MEDIA_CONFIG, MEDIA_LICENSE, MEDIA_MANIFEST, MEDIA_MODEL, MEDIA_PARAMS,
                                       MEDIA_SYSTEM, MEDIA_TEMPLATE, Layer, Manifest, ManifestError,
                                       ModelNotFoundError, Store, decode_manifest)
from tests.test_store_blobs import snapshot


def put_blob(root: Path, data: bytes) -> dict[str, object]:
    """Writes a blob the way Ollama leaves it on disk and returns its manifest entry."""
    hexdigest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{hexdigest}").write_bytes(data)
    return {"digest": f"sha256:{hexdigest}", "size": len(data)}


def ollama_store(root: Path, name: str = "registry.ollama.ai/library/tiny/latest",
                 weights: bytes = b"GGUF fake weights") -> dict[str, object]:
    """A store as Ollama writes it: Go's json.Marshal output, blobs named sha256-<hex>."""
    config = json.dumps({
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
        "model_type": "134.52M", "file_type": "Q4_1", "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, **put_blob(root, config)},
        "layers": [
            {"mediaType": MEDIA_MODEL, **put_blob(root, weights)},
            {"mediaType": MEDIA_TEMPLATE, **put_blob(root, b"{{ .Prompt }}")},
            {"mediaType": MEDIA_LICENSE, **put_blob(root, b"Apache 2.0")},
            {"mediaType": MEDIA_PARAMS, **put_blob(root, b'{"stop":["<|im_end|>"]}')},
        ],
    }
    path = root / "manifests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, separators=(",", ":")))
    return manifest


def test_store_follows_settings(tmp_path: Path) -> None:
    s = settings.load({"OLLAMA_MODELS": str(tmp_path / "m"), "OLLAMA_NOPRUNE": "1"})
    store = Store.from_settings(s)
    assert store.root == tmp_path / "m"
    assert store.noprune


def test_reads_a_store_written_by_ollama(tmp_path: Path) -> None:
    raw = ollama_store(tmp_path)
    store = Store(tmp_path)
    manifest = store.read(names.parse("tiny"))
    assert manifest.config.digest == raw["config"]["digest"]  # type: ignore[index]
    assert store.text(manifest.layer(MEDIA_TEMPLATE)) == "{{ .Prompt }}"  # type: ignore[arg-type]
    [model] = store.models()
    assert model.name.display() == "tiny:latest"
    manifest_bytes = (tmp_path / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    assert model.digest == hashlib.sha256(manifest_bytes).hexdigest()
    assert model.size == sum(layer["size"] for layer in raw["layers"]) + raw["config"]["size"]  # type: ignore
    assert model.config.model_type == "134.52M"
    assert model.config.file_type == "Q4_1"
    assert model.config.model_family == "llama"


def test_our_manifest_json_is_ollamas(tmp_path: Path) -> None:
    raw = ollama_store(tmp_path)
    store = Store(tmp_path)
    manifest = store.read(names.parse("tiny"))
    store.write(names.parse("again"), manifest)
    ours = json.loads((tmp_path / "manifests/registry.ollama.ai/library/again/latest").read_bytes())
    assert ours == raw


def test_lookup_ignores_case(tmp_path: Path) -> None:
    ollama_store(tmp_path, name="registry.ollama.ai/library/SmolLM2/135M")
    store = Store(tmp_path)
    assert store.resolve(names.parse("smollm2:135m")) == names.parse("SmolLM2:135M")
    assert store.read(names.parse("SMOLLM2:135m")).layers
    with pytest.raises(ModelNotFoundError, match="model 'smollm2:7b' not found"):
        store.read(names.parse("smollm2:7b"))


def test_writing_a_name_differing_in_case_replaces_the_model(tmp_path: Path) -> None:
    ollama_store(tmp_path, name="registry.ollama.ai/library/Tiny/latest")
    store = Store(tmp_path)
    written = store.write(names.parse("tiny"), store.read(names.parse("Tiny")))
    assert written.model == "Tiny"
    assert [m.name.model for m in store.models()] == ["Tiny"]


def test_copy_shares_blobs_and_remove_keeps_shared_ones(tmp_path: Path) -> None:
    ollama_store(tmp_path)
    store = Store(tmp_path)
    blobs_before = set(store.blobs.digests())
    store.copy(names.parse("tiny"), names.parse("me/tiny-copy:v1"))
    assert set(store.blobs.digests()) == blobs_before
    assert sorted(m.name.display() for m in store.models()) == ["me/tiny-copy:v1", "tiny:latest"]

    assert store.delete(names.parse("tiny")) == []
    assert set(store.blobs.digests()) == blobs_before
    assert not (tmp_path / "manifests/registry.ollama.ai/library").exists()

    removed = store.delete(names.parse("me/tiny-copy:v1"))
    assert set(removed) == blobs_before
    assert list(store.blobs.digests()) == []
    assert store.models() == []
    assert os.listdir(tmp_path / "manifests") == []


def test_remove_prunes_only_what_no_other_model_uses(tmp_path: Path) -> None:
    ollama_store(tmp_path, name="registry.ollama.ai/library/a/latest", weights=b"weights A")
    ollama_store(tmp_path, name="registry.ollama.ai/library/b/latest", weights=b"weights B")
    store = Store(tmp_path)
    weights_a = store.read(names.parse("a")).layer(MEDIA_MODEL).digest  # type: ignore[union-attr]
    removed = store.delete(names.parse("a"))
    assert removed == [weights_a]
    for digest in store.read(names.parse("b")).digests():
        assert store.blobs.verify(digest)


def test_noprune_keeps_blobs(tmp_path: Path) -> None:
    ollama_store(tmp_path)
    store = Store(tmp_path, noprune=True)
    before = set(store.blobs.digests())
    assert store.delete(names.parse("tiny")) == []
    assert set(store.blobs.digests()) == before
    assert store.prune() == []


def test_unreadable_manifest_blocks_pruning(tmp_path: Path) -> None:
    ollama_store(tmp_path, name="registry.ollama.ai/library/a/latest")
    store = Store(tmp_path)
    broken = tmp_path / "manifests/registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    before = set(store.blobs.digests())
    assert store.delete(names.parse("a")) == []
    assert set(store.blobs.digests()) == before
    assert [m.name.model for m in store.models()] == []


def test_prune_removes_orphans_and_leftovers(tmp_path: Path) -> None:
    ollama_store(tmp_path)
    store = Store(tmp_path)
    orphan = store.blobs.write_bytes(b"nobody uses me")
    (tmp_path / "blobs" / ".partial-dead").write_bytes(b"killed writer")
    (tmp_path / "manifests/registry.ollama.ai/library/tiny/.partial-x").write_bytes(b"{}")
    assert store.prune() == [orphan]
    assert not (tmp_path / "blobs" / ".partial-dead").exists()
    assert not (tmp_path / "manifests/registry.ollama.ai/library/tiny/.partial-x").exists()
    assert store.models()[0].name.display() == "tiny:latest"


def test_manifest_naming_missing_or_resized_blobs_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    config = store.blobs.write_bytes(b"{}")
    good = Layer(media_type=MEDIA_CONFIG, digest=config, size=2)
    missing = Layer(media_type=MEDIA_MODEL, digest="sha256:" + "1" * 64, size=5)
    before = snapshot(tmp_path)
    with pytest.raises(ManifestError, match="is missing"):
        store.write(names.parse("x"), Manifest(config=good, layers=[missing]))
    with pytest.raises(ManifestError, match="has 2 bytes"):
        store.write(names.parse("x"), Manifest(config=good, layers=[Layer(media_type=MEDIA_SYSTEM,
                                                                          digest=config, size=3)]))
    assert {k: v for k, v in snapshot(tmp_path).items() if "lock" not in k} == before


@pytest.mark.parametrize("body", [
    b"",
    b"[]",
    b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../etc/passwd","size":1},"layers":[]}',
    b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:' + b"a" * 64 + b'\\n","size":1},"layers":[]}',
    b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:' + b"a" * 64 + b'","size":-1},"layers":[]}',
])
def test_hostile_manifests_are_refused(body: bytes) -> None:
    with pytest.raises(ManifestError, match="not a valid manifest"):
        decode_manifest(body)


def test_hostile_manifest_in_store_does_not_break_listing(tmp_path: Path) -> None:
    ollama_store(tmp_path)
    evil = tmp_path / "manifests/registry.ollama.ai/library/evil/latest"
    evil.parent.mkdir(parents=True)
    evil.write_bytes(b'{"schemaVersion":2,"mediaType":"m","config":{"mediaType":"c","digest":'
                     b'"sha256-../../../../etc/passwd","size":1},"layers":[]}')
    store = Store(tmp_path)
    assert [m.name.model for m in store.models()] == ["tiny"]
    with pytest.raises(ManifestError):
        store.read(names.parse("evil"))


def test_huge_manifest_file_is_not_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "manifests/registry.ollama.ai/library/big/latest"
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.truncate(64 << 20)
    with pytest.raises(ManifestError, match="larger than"):
        Store(tmp_path).read(names.parse("big"))
