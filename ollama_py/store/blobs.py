"""Content-addressed blobs: `blobs/sha256-<hex>`, written atomically and verified.

A digest comes from requests, manifests and Modelfiles, so it is checked
against one pattern before it is turned into a path (Ollama's CVE-2024-37032
was a digest that walked out of the blobs folder). A blob is written to a
temporary file inside the store, hashed as it is written, fsynced, and only
renamed into place when its digest matches: a reader never sees a partial or
wrong blob under a real name, and a rejected write leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, BinaryIO

import msgspec

log = logging.getLogger(__name__)

DIGEST_PATTERN = r"^sha256[:-][0-9a-f]{64}$"
Digest = Annotated[str, msgspec.Meta(pattern=DIGEST_PATTERN)]
_DIGEST = re.compile(DIGEST_PATTERN)

# Temporary files start with this; nothing else in blobs/ does, so a sweep can
# tell leftovers of a killed writer from blobs.
TEMP_PREFIX = ".partial-"
_CHUNK = 1 << 20

Progress = Callable[[int], None]  # bytes written so far


class InvalidDigestError(ValueError):
    """A digest that is not `sha256:` or `sha256-` followed by 64 lowercase hex digits."""


class DigestMismatchError(ValueError):
    """The bytes received do not hash to the digest they were announced with."""


class BlobNotFoundError(FileNotFoundError):
    """A manifest or request names a blob the store does not hold."""


def check_digest(digest: str) -> str:
    """The digest in manifest form (`sha256:<hex>`), or InvalidDigestError.

    `fullmatch`, not `match`: with `match`, `$` would let a trailing newline through.
    """
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        shown = digest[:80] if isinstance(digest, str) else type(digest).__name__
        raise InvalidDigestError(f"invalid digest {shown!r}: expected sha256: followed by 64 lowercase hex digits")
    return "sha256:" + digest[7:]


def fsync_dir(path: Path) -> None:
    """Makes a rename in `path` durable: without it a crash can lose the new name."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(target: Path, data: bytes, *, temp_dir: Path) -> None:
    """Replaces target with data so that readers see the old file or the new one, never a mix."""
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=temp_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


class BlobStore:
    """The `blobs/` folder of one store."""

    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"

    def path(self, digest: str) -> Path:
        """The file for a digest; the digest is validated first, so the path stays in blobs/."""
        return self.root / ("sha256-" + check_digest(digest)[7:])

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        path = self.path(digest)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {check_digest(digest)} not found") from None

    def digests(self) -> Iterator[str]:
        """Every blob present, in manifest form; files that are not blobs are skipped."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            name = entry.name
            if name.startswith("sha256-") and _DIGEST.fullmatch(name) and entry.is_file():
                yield "sha256:" + name[7:]

    def hash_file(self, path: Path) -> str:
        """The digest a file would be stored under, without storing it."""
        with path.open("rb") as f:
            return _hash_stream(f)

    def verify(self, digest: str) -> bool:
        """Re-hashes a stored blob: for checks after a crash, not on every read."""
        path = self.path(digest)
        if not path.is_file():
            return False
        with path.open("rb") as f:
            return _hash_stream(f) == check_digest(digest)

    def write_stream(self, src: BinaryIO, *, digest: str | None = None, progress: Progress | None = None) -> str:
        """Copies src into the store and returns its digest.

        With `digest` given, the bytes must hash to it or DigestMismatchError is
        raised and nothing is kept. An existing blob with the same digest is
        left as it is (identical content by construction).
        """
        expected = check_digest(digest) if digest is not None else None
        if expected is not None and self.exists(expected):
            return expected
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.root)
        tmp = Path(tmp_name)
        try:
            hasher = hashlib.sha256()
            done = 0
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    out.write(block)
                    hasher.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done)
                out.flush()
                os.fsync(out.fileno())
            got = "sha256:" + hasher.hexdigest()
            if expected is not None and got != expected:
                raise DigestMismatchError(f"digest mismatch: expected {expected}, the data hashes to {got}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path(got))
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.root)
        log.debug("stored blob %s (%d bytes)", got, done)
        return got

    def write_bytes(self, data: bytes, *, digest: str | None = None) -> str:
        """Stores a small blob (template, params, config) and returns its digest."""
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest is not None and check_digest(digest) != got:
            raise DigestMismatchError(f"digest mismatch: expected {check_digest(digest)}, the data hashes to {got}")
        if self.exists(got):
            return got
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path(got), data, temp_dir=self.root)
        return got

    def write_file(self, source: Path, *, digest: str | None = None, progress: Progress | None = None) -> str:
        """Copies a local file (a GGUF named by FROM) into the store, verified as it is copied."""
        with source.open("rb") as src:
            return self.write_stream(src, digest=digest, progress=progress)

    def read_bytes(self, digest: str, *, limit: int) -> bytes:
        """A small blob's content; `limit` guards against a manifest pointing a text layer at weights."""
        path = self.path(digest)
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {check_digest(digest)} not found") from None
        if len(data) > limit:
            raise ValueError(f"blob {check_digest(digest)} is larger than {limit} bytes")
        return data

    def remove(self, digests: Iterable[str]) -> list[str]:
        """Deletes blobs; returns the ones that were there."""
        removed = []
        for digest in digests:
            try:
                self.path(digest).unlink()
                removed.append(check_digest(digest))
            except FileNotFoundError:
                continue
        if removed:
            fsync_dir(self.root)
        return removed

    def remove_leftovers(self) -> list[Path]:
        """Deletes temporary files of writers that died; only safe while no writer runs."""
        if not self.root.is_dir():
            return []
        gone = [p for p in self.root.iterdir() if p.name.startswith(TEMP_PREFIX)]
        for p in gone:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return gone


def _hash_stream(src: BinaryIO) -> str:
    hasher = hashlib.sha256()
    for block in iter(lambda: src.read(_CHUNK), b""):
        hasher.update(block)
    return "sha256:" + hasher.hexdigest()
