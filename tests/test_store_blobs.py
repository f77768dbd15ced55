"""Blobs: digests checked before any path, verified writes, nothing left after a rejected one."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import msgspec
import pytest

from ollama_py.store.blobs import (BlobNotFoundError, BlobStore, Digest, DigestMismatchError, InvalidDigestError,
                                   check_digest)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with its sha256: two equal snapshots mean nothing changed."""
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in files:
            path = Path(dirpath) / f
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


GOOD = "sha256:" + "0123456789abcdef" * 4


def test_check_digest_accepts_both_separators() -> None:
    assert check_digest(GOOD) == GOOD
    assert check_digest(GOOD.replace(":", "-")) == GOOD


@pytest.mark.parametrize("bad", [
    "", "sha256:", "sha256:abc", GOOD + "0", GOOD[:-1], GOOD.upper(), GOOD + "\n", "\n" + GOOD,
    "sha256:" + "g" * 64, "sha512:" + "0" * 64, "sha256/" + "0" * 64, "sha256:../../../../etc/passwd",
    "sha256-" + "0" * 63 + "/", "../blobs/sha256-" + "0" * 64, "/etc/passwd", "sha256:" + "0" * 32 + "%2e" * 10,
])
def test_bad_digests_never_become_paths(tmp_path: Path, bad: str) -> None:
    store = BlobStore(tmp_path)
    for call in (store.path, store.exists, check_digest):
        with pytest.raises(InvalidDigestError):
            call(bad)
    with pytest.raises(InvalidDigestError):
        store.write_bytes(b"x", digest=bad)
    with pytest.raises(InvalidDigestError):
        store.write_stream(io.BytesIO(b"x"), digest=bad)
    assert snapshot(tmp_path) == {}


def test_digest_type_in_structs() -> None:
    class Ref(msgspec.Struct):
        digest: Digest

    assert msgspec.json.decode(f'{{"digest": "{GOOD}"}}'.encode(), type=Ref).digest == GOOD
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"digest": "sha256:../../x"}', type=Ref)


def test_stream_write_verifies_and_lands_under_its_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(3 << 20)
    seen: list[int] = []
    got = store.write_stream(io.BytesIO(data), digest=digest_of(data), progress=seen.append)
    assert got == digest_of(data)
    assert (tmp_path / "blobs" / ("sha256-" + got[7:])).read_bytes() == data
    assert seen[-1] == len(data)
    assert store.verify(got)
    assert list(store.digests()) == [got]


def test_mismatched_stream_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = b"the real bytes"
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        store.write_stream(io.BytesIO(data), digest=digest_of(b"other bytes"))
    assert list((tmp_path / "blobs").iterdir()) == []
    with pytest.raises(DigestMismatchError):
        store.write_bytes(data, digest=digest_of(b"other bytes"))
    assert list((tmp_path / "blobs").iterdir()) == []


def test_failing_source_leaves_nothing(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise ConnectionResetError("peer went away")
            return b"x" * 1000

    store = BlobStore(tmp_path)
    with pytest.raises(ConnectionResetError):
        store.write_stream(Broken())  # type: ignore[arg-type]
    assert list((tmp_path / "blobs").iterdir()) == []


def test_write_file_and_existing_blob_is_kept(tmp_path: Path) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + b"\0" * 100)
    store = BlobStore(tmp_path / "store")
    first = store.write_file(source)
    before = (tmp_path / "store" / "blobs" / ("sha256-" + first[7:])).stat().st_ino
    assert store.write_file(source, digest=first) == first
    assert (tmp_path / "store" / "blobs" / ("sha256-" + first[7:])).stat().st_ino == before


def test_verify_notices_a_damaged_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    got = store.write_bytes(b"template text")
    store.path(got).write_bytes(b"tampered")
    assert not store.verify(got)
    assert not store.verify(digest_of(b"never stored"))


def test_read_bytes_limits_and_missing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    got = store.write_bytes(b"x" * 100)
    assert store.read_bytes(got, limit=100) == b"x" * 100
    with pytest.raises(ValueError, match="larger than 10"):
        store.read_bytes(got, limit=10)
    with pytest.raises(BlobNotFoundError):
        store.read_bytes(digest_of(b"nope"), limit=10)


def test_leftovers_are_swept_and_are_not_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    got = store.write_bytes(b"keep me")
    (tmp_path / "blobs" / ".partial-abc123").write_bytes(b"half a blob")
    assert list(store.digests()) == [got]
    assert [p.name for p in store.remove_leftovers()] == [".partial-abc123"]
    assert sorted(os.listdir(tmp_path / "blobs")) == ["sha256-" + got[7:]]
