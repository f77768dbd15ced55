"""Content-addressed blobs: `blobs/sha256-<hex>`, written atomically and verified.

A digest comes from requests, manifests and Modelfiles, so it is checked
against one pattern before it is turned into a path (Ollama's CVE-2024-37032
was a digest that walked out of the blobs folder). A blob is written to a
temporary file inside the store, hashed as it is written, fsynced, and only
renamed into place when its digest matches: a reader never sees a partial or
wrong blob under a real name, and a rejected write leaves nothing behind.

The store holds only what it owns: no path it reads, writes or deletes may
lead out of OLLAMA_MODELS through a symlink (`confined`). A writer holds an
exclusive `flock` on its temporary file while it writes, so that a sweep by
another process on the same store (a second server starting) can tell an
upload in progress from the leftover of a writer that died.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import time
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

# A write that failed for want of space: 507 Insufficient Storage, not our fault.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


class OutsideStoreError(PermissionError):
    """A path in the store that a symlink leads out of OLLAMA_MODELS: never read, written or deleted through."""


def confined(store_root: Path, path: Path) -> Path:
    """`path`, or OutsideStoreError when resolving its symlinks leads out of the store.

    The check resolves every symlink on the way, the last component included,
    and works for paths not created yet (their existing prefix is resolved):
    a folder that is a symlink out is refused before anything is made in it.
    """
    real_root = os.path.realpath(store_root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise OutsideStoreError(f"{path} leads out of the model store (to {real}): "
                                "ollama-py does not follow symlinks out of OLLAMA_MODELS")
    return path


def temp_file(folder: Path) -> tuple[int, Path]:
    """A new temporary file in `folder`, open and exclusively locked for as long as the writer holds it."""
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh file: nobody else holds it, so this never waits
    return fd, Path(name)


def remove_if_stale(store_root: Path, path: Path, *, older_than: float) -> bool:
    """Removes a temporary file of a writer that is gone: not locked by any process, and not modified since
    `older_than` (a time.time() value). The age guards the instant between a writer's mkstemp and its flock.

    A symlink (hf_transfer's link to a partial file) counts as held while its target is; one that leads
    out of the store is removed without being opened.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if st.st_mtime > older_than:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
        return True
    try:
        confined(store_root, path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, OutsideStoreError):
        path.unlink(missing_ok=True)  # a link whose target is gone, or outside
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a writer, in this process or another, still holds it
    else:
        path.unlink(missing_ok=True)  # while locked: no writer can claim it meanwhile
        return True
    finally:
        os.close(fd)


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
    fd, tmp = temp_file(temp_dir)
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
        self.store_root = root
        self.root = root / "blobs"

    def inside(self, path: Path) -> Path:
        """`path`, refused (OutsideStoreError) when it leads out of the store."""
        return confined(self.store_root, path)

    def folder(self) -> Path:
        """The blobs folder, made if missing; refused when it is a symlink out of the store."""
        self.inside(self.root).mkdir(parents=True, exist_ok=True)
        return self.root

    def _name(self, digest: str) -> Path:
        """Where a digest's blob goes; a symlink found there is replaced or removed, never followed."""
        return self.inside(self.root) / ("sha256-" + check_digest(digest)[7:])

    def path(self, digest: str) -> Path:
        """The file for a digest to read; the digest is validated first, and the path never leads out of the
        store (OutsideStoreError)."""
        return self.inside(self._name(digest))

    def exists(self, digest: str) -> bool:
        try:
            return self.path(digest).is_file()
        except OutsideStoreError:
            return False

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except (FileNotFoundError, OutsideStoreError):
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
        if not self.exists(digest):
            return False
        with self.path(digest).open("rb") as f:
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
        fd, tmp = temp_file(self.folder())
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
            os.replace(tmp, self._name(got))
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
        atomic_write_bytes(self._name(got), data, temp_dir=self.folder())
        return got

    def write_file(self, source: Path, *, digest: str | None = None, progress: Progress | None = None) -> str:
        """Copies a local file (a GGUF named by FROM) into the store, verified as it is copied."""
        with source.open("rb") as src:
            return self.write_stream(src, digest=digest, progress=progress)

    def read_bytes(self, digest: str, *, limit: int) -> bytes:
        """A small blob's content; `limit` guards against a manifest pointing a text layer at weights."""
        try:
            with self.path(digest).open("rb") as f:
                data = f.read(limit + 1)
        except (FileNotFoundError, OutsideStoreError):
            raise BlobNotFoundError(f"blob {check_digest(digest)} not found") from None
        if len(data) > limit:
            raise ValueError(f"blob {check_digest(digest)} is larger than {limit} bytes")
        return data

    def remove(self, digests: Iterable[str]) -> list[str]:
        """Deletes blobs; returns the ones that were there. A blob that is a symlink loses the link, never
        its target."""
        removed = []
        for digest in digests:
            try:
                self._name(digest).unlink()
                removed.append(check_digest(digest))
            except FileNotFoundError:
                continue
        if removed:
            fsync_dir(self.root)
        return removed

    def remove_leftovers(self, *, older_than: float | None = None) -> list[Path]:
        """Deletes temporary files of writers that died: unlocked, and untouched since `older_than`
        (time.time(); by default now). A writer in another process keeps its file."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() if older_than is None else older_than
        folder = self.inside(self.root)
        return [p for p in sorted(folder.iterdir())
                if p.name.startswith(TEMP_PREFIX) and remove_if_stale(self.store_root, p, older_than=cutoff)]

    def modified(self, digest: str) -> float:
        """When a blob was last written (time.time()), its link's own time for a symlink."""
        return self._name(digest).lstat().st_mtime


def _hash_stream(src: BinaryIO) -> str:
    hasher = hashlib.sha256()
    for block in iter(lambda: src.read(_CHUNK), b""):
        hasher.update(block)
    return "sha256:" + hasher.hexdigest()
