"""Manifests and the store that holds them, in Ollama's own on-disk format.

`manifests/<host>/<namespace>/<model>/<tag>` is a Docker distribution v2
manifest whose layers point at blobs by digest. We write exactly what Ollama
writes, so a user's existing `~/.ollama/models` works here and ours works in
Ollama. Ordering keeps the store consistent across a crash: blobs are written
(verified) before the manifest that names them, a manifest is replaced in one
rename, and removal deletes the manifest before the blobs it alone used.

A lock file serialises pruning against writers: writers hold it shared (many
at once), pruning holds it exclusive, so a blob just written for a manifest
not yet written is never taken for garbage. Several servers may share one
store: the start-up prune skips its turn while any process writes, and leaves
alone what another process may still be using (a locked temporary file, or an
unused blob younger than the prune grace: an upload waiting for its create).

No path is followed out of the store through a symlink: a model whose folder
or manifest leads out is not found, and a write or delete there is refused.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import msgspec

from ollama_py.settings import Settings
from ollama_py.store import names
from ollama_py.store.blobs import (
    TEMP_PREFIX,
    BlobNotFoundError,
    BlobStore,
    Digest,
    OutsideStoreError,
    atomic_write_bytes,
    check_digest,
    confined,
    fsync_dir,
    remove_if_stale,
)
from ollama_py.store.names import ModelName

log = logging.getLogger(__name__)

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
_OLLAMA = "application/vnd.ollama.image."
MEDIA_MODEL = _OLLAMA + "model"
MEDIA_ADAPTER = _OLLAMA + "adapter"
MEDIA_PROJECTOR = _OLLAMA + "projector"
MEDIA_DRAFT = _OLLAMA + "draft"  # a draft model's GGUF for speculative decoding
MEDIA_TEMPLATE = _OLLAMA + "template"
MEDIA_PROMPT = _OLLAMA + "prompt"  # legacy name of the template layer, still found in old stores
MEDIA_SYSTEM = _OLLAMA + "system"
MEDIA_PARAMS = _OLLAMA + "params"
MEDIA_MESSAGES = _OLLAMA + "messages"
MEDIA_LICENSE = _OLLAMA + "license"

# A manifest is a few hundred bytes; a bigger file is not one we wrote or Ollama did.
MAX_MANIFEST_BYTES = 4 << 20
MAX_TEXT_LAYER_BYTES = 16 << 20
_LOCK_NAME = ".ollama-py.lock"


class ModelNotFoundError(LookupError):
    """No manifest for this name; the message is the one Ollama prints."""


class ManifestError(ValueError):
    """A manifest file that cannot be read as one, or that names missing blobs."""


class Layer(msgspec.Struct, kw_only=True, omit_defaults=True,
            rename={"media_type": "mediaType", "from_": "from"}):
    media_type: str
    digest: Digest
    size: int
    from_: str = ""  # Ollama records the model a layer was inherited from
    name: str = ""

    def __post_init__(self) -> None:
        # msgspec's pattern check uses re.search, whose `$` lets a trailing newline through.
        check_digest(self.digest)
        if self.size < 0:
            raise ValueError(f"layer {self.digest} has a negative size")


class Manifest(msgspec.Struct, kw_only=True, rename="camel"):
    schema_version: int = 2
    media_type: str = MEDIA_MANIFEST
    config: Layer
    layers: list[Layer]

    def layer(self, media_type: str) -> Layer | None:
        """The first layer of a type; Ollama uses the first where one is expected."""
        return next((layer for layer in self.layers if layer.media_type == media_type), None)

    def layers_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    def digests(self) -> set[str]:
        return {check_digest(self.config.digest)} | {check_digest(layer.digest) for layer in self.layers}

    @property
    def size(self) -> int:
        """What `ollama list` shows: config plus every layer."""
        return self.config.size + sum(layer.size for layer in self.layers)


class RootFS(msgspec.Struct, kw_only=True):
    type: str = "layers"
    diff_ids: list[str] = msgspec.field(default_factory=list)


class ModelConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The config blob (Ollama's ConfigV2): what `list` and `show` report as details."""

    model_format: str = ""
    model_family: str = ""
    model_families: list[str] | None = None
    model_type: str = ""  # parameter size, e.g. "134.52M"
    file_type: str = ""  # quantisation, e.g. "Q4_1"
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    capabilities: list[str] | None = None
    context_length: int = 0
    embedding_length: int = 0
    base_name: str = ""
    architecture: str = "amd64"
    os: str = "linux"
    rootfs: RootFS = msgspec.field(default_factory=RootFS)


class LocalModel(msgspec.Struct, frozen=True, kw_only=True):
    """One row of `list`."""

    name: ModelName
    digest: str  # hex sha256 of the manifest file, as Ollama reports it
    size: int
    modified_at: datetime
    config: ModelConfig


_manifest_decoder = msgspec.json.Decoder(Manifest)
_config_decoder = msgspec.json.Decoder(ModelConfig)
_encoder = msgspec.json.Encoder()


def encode_manifest(manifest: Manifest) -> bytes:
    return _encoder.encode(manifest)


def decode_manifest(data: bytes, *, where: str = "manifest") -> Manifest:
    try:
        return _manifest_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ManifestError(f"{where} is not a valid manifest: {exc}") from None


class Store:
    """An Ollama model store rooted at OLLAMA_MODELS."""

    def __init__(self, root: Path, *, noprune: bool = False, prune_grace: float = 0.0) -> None:
        self.root = Path(root)
        self.noprune = noprune
        # Seconds an unused blob or an unlocked temporary file is left alone by `prune` (another server's work).
        self.prune_grace = prune_grace
        self.blobs = BlobStore(self.root)
        self.manifests = self.root / "manifests"

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(settings.models, noprune=settings.noprune, prune_grace=settings.prune_grace)

    # -- locking ---------------------------------------------------------

    @contextmanager
    def _lock(self, kind: int) -> Iterator[bool]:
        """Holds the store's lock; yields False instead of waiting when `kind` has LOCK_NB and it is taken."""
        self.root.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a lock file that is a symlink is refused, never created or opened elsewhere.
        fd = os.open(self.root / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            try:
                fcntl.flock(fd, kind)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while writing blobs and then the manifest that names them."""
        with self._lock(fcntl.LOCK_SH):
            yield

    # -- names and paths -------------------------------------------------

    def _file(self, name: ModelName) -> Path:
        """The manifest's path; OutsideStoreError when a symlink on the way leads out of the store."""
        path = self.manifests.joinpath(*name.manifest_path.parts)
        # names.parse already refused anything that could leave the folder; this is the second lock on the door.
        if os.path.commonpath([os.path.abspath(path), os.path.abspath(self.manifests)]) != os.path.abspath(
                self.manifests):
            raise names.InvalidNameError(f"{name} would leave the store")
        return confined(self.root, path)

    def _inside(self, path: Path) -> bool:
        try:
            confined(self.root, path)
        except OutsideStoreError as exc:
            log.warning("ignoring %s", exc)
            return False
        return True

    def resolve(self, name: ModelName) -> ModelName | None:
        """The stored name matching `name` case-insensitively, with the case it has on disk."""
        folder = self.manifests
        found: list[str] = []
        for part in name.manifest_path.parts:
            try:
                entries = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                return None
            exact = part if part in entries else next((e for e in sorted(entries) if e.lower() == part.lower()), None)
            if exact is None:
                return None
            found.append(exact)
            folder = folder / exact
        if not folder.is_file() or not self._inside(folder):
            return None
        return names.from_manifest_path(PurePosixPath(*found))

    def _require(self, name: ModelName) -> ModelName:
        stored = self.resolve(name)
        if stored is None:
            raise ModelNotFoundError(f"model '{name.display()}' not found")
        return stored

    # -- reading ---------------------------------------------------------

    def _read_file(self, path: Path) -> bytes:
        with path.open("rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: not a manifest")
        return data

    def _read_model(self, name: ModelName) -> tuple[ModelName, bytes]:
        """The stored name and its manifest's bytes; ModelNotFoundError also when a delete wins the race."""
        stored = self._require(name)
        try:
            return stored, self._read_file(self._file(stored))
        except FileNotFoundError:
            raise ModelNotFoundError(f"model '{name.display()}' not found") from None

    def read(self, name: ModelName) -> Manifest:
        stored, data = self._read_model(name)
        return decode_manifest(data, where=f"the manifest of {stored.display()}")

    def read_bytes(self, name: ModelName) -> bytes:
        """The manifest file as stored: what a push sends, so the registry's digest is the local one."""
        return self._read_model(name)[1]

    def modified_at(self, name: ModelName) -> datetime:
        """When the model's manifest was written: `modified_at` in list and show."""
        try:
            mtime = self._file(self._require(name)).stat().st_mtime
        except FileNotFoundError:  # removed since it was resolved
            raise ModelNotFoundError(f"model '{name.display()}' not found") from None
        return datetime.fromtimestamp(mtime, tz=UTC)

    def manifest_digest(self, name: ModelName) -> str:
        """Hex sha256 of the manifest bytes: the ID column of `ollama list`."""
        return hashlib.sha256(self._read_model(name)[1]).hexdigest()

    def config(self, manifest: Manifest) -> ModelConfig:
        """The config blob; an empty config when it is missing, as a damaged store should still list."""
        try:
            data = self.blobs.read_bytes(manifest.config.digest, limit=MAX_MANIFEST_BYTES)
        except BlobNotFoundError:
            log.warning("config blob %s is missing", manifest.config.digest)
            return ModelConfig()
        try:
            return _config_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("config blob %s is not a model config: %s", manifest.config.digest, exc)
            return ModelConfig()

    def text(self, layer: Layer) -> str:
        """A text layer (template, system, license, params) as a string."""
        return self.blobs.read_bytes(layer.digest, limit=MAX_TEXT_LAYER_BYTES).decode("utf-8", errors="replace")

    def _walk(self) -> Iterator[tuple[ModelName, Path]]:
        if not self.manifests.is_dir():
            return
        for dirpath, _, files in os.walk(self.manifests):
            for file in files:
                path = Path(dirpath) / file
                if file.startswith(TEMP_PREFIX) or not self._inside(path):
                    continue
                relative = PurePosixPath(path.relative_to(self.manifests).as_posix())
                try:
                    yield names.from_manifest_path(relative), path
                except names.InvalidNameError:
                    continue

    def models(self) -> list[LocalModel]:
        """Every readable model, newest first, as `ollama list` orders them."""
        out = []
        for name, path in self._walk():
            try:
                data = self._read_file(path)
                manifest = decode_manifest(data, where=str(path))
                mtime = path.stat().st_mtime
            except (OSError, ManifestError) as exc:
                log.warning("skipping %s: %s", path, exc)
                continue
            out.append(LocalModel(
                name=name, digest=hashlib.sha256(data).hexdigest(), size=manifest.size,
                modified_at=datetime.fromtimestamp(mtime, tz=UTC), config=self.config(manifest)))
        out.sort(key=lambda m: m.modified_at, reverse=True)
        return out

    # -- writing ---------------------------------------------------------

    def write(self, name: ModelName, manifest: Manifest, *, data: bytes | None = None) -> ModelName:
        """Writes a manifest after checking that every blob it names is there with its size.

        A name that matches a stored one case-insensitively replaces that one,
        so the store never holds two models that differ only in case. `data` is
        the manifest as a registry sent it (decoded into `manifest`): stored
        as it came, its digest stays the registry's, as in Ollama.
        """
        with self.writing():
            for layer in [manifest.config, *manifest.layers]:
                try:
                    size = self.blobs.size(layer.digest)
                except BlobNotFoundError:
                    raise ManifestError(f"cannot write {name.display()}: blob {layer.digest} is missing") from None
                if size != layer.size:
                    raise ManifestError(f"cannot write {name.display()}: blob {layer.digest} has {size} bytes, "
                                        f"the manifest says {layer.size}")
            target = self.resolve(name) or name
            path = self._file(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, encode_manifest(manifest) if data is None else data, temp_dir=path.parent)
            log.info("wrote manifest %s", target)
            return target

    def copy(self, source: ModelName, destination: ModelName) -> ModelName:
        """`ollama cp`: a second manifest naming the same blobs."""
        return self.write(destination, self.read(source))

    def _references(self, *, excluding: Path | None = None) -> set[str] | None:
        """Digests used by every manifest; None when one cannot be read, as then nothing is safe to delete."""
        used: set[str] = set()
        for _, path in self._walk():
            if excluding is not None and path == excluding:
                continue
            try:
                used |= decode_manifest(self._read_file(path), where=str(path)).digests()
            except (OSError, ManifestError) as exc:
                log.warning("not pruning: %s", exc)
                return None
        return used

    def delete(self, name: ModelName) -> list[str]:
        """`ollama rm`: removes the manifest, then the blobs no other manifest uses.

        Returns the digests removed (none with OLLAMA_NOPRUNE).
        """
        with self._lock(fcntl.LOCK_EX):
            stored = self._require(name)
            path = self._file(stored)
            try:
                manifest = decode_manifest(self._read_file(path), where=str(path))
                candidates = manifest.digests()
            except ManifestError as exc:
                log.warning("removing unreadable manifest %s: %s", path, exc)
                candidates = set()
            path.unlink()
            fsync_dir(path.parent)
            self._remove_empty_dirs(path.parent)
            return self._remove_unused(candidates)

    def remove_unused(self, candidates: set[str]) -> list[str]:
        """Deletes those of `candidates` no manifest uses (a pull's replaced layers); none with OLLAMA_NOPRUNE."""
        with self._lock(fcntl.LOCK_EX):
            return self._remove_unused(candidates)

    def _remove_unused(self, candidates: set[str]) -> list[str]:
        if self.noprune or not candidates:
            return []
        used = self._references()
        if used is None:
            return []
        return self.blobs.remove(sorted(candidates - used))

    def prune(self) -> list[str]:
        """Removes blobs no manifest uses and leftovers of killed writers (Ollama does this at startup).

        Only what is provably stale goes: nothing while another process writes (it holds the lock shared),
        no temporary file a writer still holds, and nothing modified within `prune_grace` seconds (a blob
        uploaded for a create that has not come yet).
        """
        if self.noprune:
            return []
        with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB) as locked:
            if not locked:
                log.info("not pruning: another process is writing to the store")
                return []
            cutoff = time.time() - self.prune_grace
            leftovers = self.blobs.remove_leftovers(older_than=cutoff)
            for dirpath, _, files in os.walk(self.manifests):
                for file in files:
                    path = Path(dirpath) / file
                    if file.startswith(TEMP_PREFIX) and remove_if_stale(self.root, path, older_than=cutoff):
                        leftovers.append(path)
            if leftovers:
                log.info("removed %d unfinished writes", len(leftovers))
            used = self._references()
            if used is None:
                return []
            unused = [d for d in sorted(set(self.blobs.digests()) - used) if self._stale(d, cutoff)]
            return self.blobs.remove(unused)

    def _stale(self, digest: str, cutoff: float) -> bool:
        try:
            return self.blobs.modified(digest) <= cutoff
        except FileNotFoundError:
            return False

    def _remove_empty_dirs(self, folder: Path) -> None:
        while folder != self.manifests and folder.is_relative_to(self.manifests):
            try:
                folder.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    return
                raise
            folder = folder.parent
