"""`hf.co/<user>/<repo>[:<quant>]`: GGUF models pulled from the Hugging Face Hub and created in the store.

The Hub API lists a repository's files with their sizes and sha256 digests
(`/api/models/<repo>?blobs=true`); we pick the GGUF for the requested
quantisation (default Q4_K_M, else the one closest to it in bits per
weight), download it from `/<repo>/resolve/<commit>/<file>` with the
machinery registry pulls use (hf_transfer, resumable, verified against the
Hub's digest), and create the model from it: the chat template and sampling
parameters come from the GGUF, as `create` derives them. A split GGUF is
downloaded part by part and merged into one blob, as Ollama does.

HF_ENDPOINT and HF_TOKEN come from the settings; the token goes to the Hub
only, never to the CDN the Hub redirects downloads to.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import urllib.parse
from pathlib import Path

import msgspec

from ollama_py.settings import Settings
from ollama_py.store import gguf, gguf_split, transfer
from ollama_py.store.blobs import InvalidDigestError, check_digest, fsync_dir, temp_file
from ollama_py.store.create import Progress, create, default_system
from ollama_py.store.manifests import Store
from ollama_py.store.modelfile import Modelfile, ParamValue
from ollama_py.store.names import DEFAULT_TAG, ModelName
from ollama_py.store.registry import check_space, download, emit, previous_digests, remove_replaced
from ollama_py.store.transfer import Cancelled, RegistryError

log = logging.getLogger(__name__)

DEFAULT_QUANT = "Q4_K_M"

# Approximate bits per weight (llama.cpp's quantize table), to find the quantisation closest to the default.
BITS: dict[str, float] = {
    "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_1": 6, "Q5_K_M": 5.7, "Q5_K_S": 5.54,
    "Q5_0": 5.5, "Q4_1": 5, "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_0": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.25,
    "MXFP4": 4.25, "Q3_K_L": 4.27, "Q3_K_M": 3.91, "IQ3_M": 3.66, "Q3_K_S": 3.5, "IQ3_S": 3.44, "IQ3_XS": 3.3,
    "IQ3_XXS": 3.06, "Q2_K": 2.96, "IQ2_M": 2.7, "Q2_K_S": 2.6, "IQ2_S": 2.5, "IQ2_XS": 2.31, "IQ2_XXS": 2.06,
    "TQ2_0": 2.06, "IQ1_M": 1.75, "TQ1_0": 1.69, "IQ1_S": 1.56,
}
# Longest first, so that Q4_K_M is found before Q4_K would be.
_QUANT = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(sorted(BITS, key=len, reverse=True)) + r")(?![A-Za-z0-9])",
                    re.IGNORECASE)
# GGUF sampling metadata (llama.cpp's general.sampling.*) and the Ollama parameter each one sets.
SAMPLING_PARAMS: dict[str, str] = {
    "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "temp": "temperature",
    "penalty_last_n": "repeat_last_n", "penalty_repeat": "repeat_penalty",
    "mirostat": "mirostat", "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta",
}


class LfsInfo(msgspec.Struct):
    sha256: str
    size: int


class RepoFile(msgspec.Struct):
    """One file as the Hub lists it; `rfilename` is a path in the repository, never one on our disk."""

    rfilename: str
    size: int | None = None
    lfs: LfsInfo | None = None

    @property
    def basename(self) -> str:
        return self.rfilename.rpartition("/")[2]

    @property
    def quant(self) -> str | None:
        m = _QUANT.search(self.basename)
        return m[1].upper() if m else None


class RepoInfo(msgspec.Struct):
    sha: str
    siblings: list[RepoFile] = msgspec.field(default_factory=list)


_repo_decoder = msgspec.json.Decoder(RepoInfo)


def _models(files: list[RepoFile]) -> list[list[RepoFile]]:
    """The repository's GGUF models: single files, and split files grouped and ordered (projectors left out)."""
    singles: list[list[RepoFile]] = []
    splits: dict[tuple[str, str, int], list[RepoFile]] = {}
    for f in sorted(files, key=lambda f: f.rfilename):
        if not f.basename.lower().endswith(".gguf") or "mmproj" in f.basename.lower():
            continue
        parsed = gguf_split.split_name(f.basename)
        if parsed is None:
            singles.append([f])
        else:
            splits.setdefault((f.rfilename.rpartition("/")[0], parsed[0], parsed[2]), []).append(f)
    complete = [group for (_, _, count), group in splits.items() if len(group) == count]
    return singles + complete


def choose(files: list[RepoFile], tag: str, repo: str) -> list[RepoFile]:
    """The file (or split parts) a tag asks for: a quantisation name, a file name, or `latest` for the default.

    `latest` takes Q4_K_M, else the quantisation closest to it in bits per
    weight (the larger one on a tie), as the Hub's Ollama integration does.
    """
    models = _models(files)
    if not models:
        raise RegistryError(f"{repo} has no GGUF model files: only GGUF repositories can be pulled", 400)
    if tag.lower().endswith(".gguf"):
        found = [m for m in models if any(f.basename.lower() == tag.lower() for f in m)]
    elif tag.lower() == DEFAULT_TAG:
        known = [m for m in models if m[0].quant in BITS]
        if not known:
            found = models[:1] if len(models) == 1 else []
        else:
            target = BITS[DEFAULT_QUANT]
            found = [min(known, key=lambda m: (abs(BITS[m[0].quant or ""] - target), -BITS[m[0].quant or ""]))]
    else:
        found = [m for m in models if (m[0].quant or "").lower() == tag.lower()]
    if not found:
        available = sorted({m[0].quant or m[0].basename for m in models})
        raise RegistryError(f"{repo} has no GGUF file for {tag!r}; available: {', '.join(available)}", 404)
    return found[0]


class _Hub:
    """The Hub's API for one repository, with the token when there is one."""

    def __init__(self, settings: Settings, repo: str) -> None:
        self.endpoint = settings.hf_endpoint
        self.repo = repo
        self.headers = {"Authorization": f"Bearer {settings.hf_token}"} if settings.hf_token else {}
        self.has_token = bool(settings.hf_token)

    def info(self) -> RepoInfo:
        url = f"{self.endpoint}/api/models/{urllib.parse.quote(self.repo)}?blobs=true"
        resp = transfer.follow("GET", url, headers=self.headers, limit=64 << 20)
        self.check(resp.status, transfer.error_text(resp))
        if not resp.complete:
            raise RegistryError(f"the Hub's listing of {self.repo} is too large")
        try:
            return _repo_decoder.decode(resp.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RegistryError(f"the Hub answered for {self.repo} with something else than a listing: {exc}") from None

    def check(self, status: int, text: str) -> None:
        if status == 200:
            return
        if status in (401, 403):
            hint = "the token has no access to it" if self.has_token else "set HF_TOKEN for gated or private models"
            raise RegistryError(f"{self.repo} on {self.endpoint}: access denied ({status}); {hint}", status)
        if status == 404:
            raise RegistryError(f"repository {self.repo} not found on {self.endpoint}", 404)
        raise RegistryError(f"{self.endpoint} answered {status} for {self.repo}: {text}", transfer.upstream_status(status))

    def locate(self, revision: str, f: RepoFile, size: int) -> transfer.Source:
        url = f"{self.endpoint}/{urllib.parse.quote(self.repo)}/resolve/{revision}/{urllib.parse.quote(f.rfilename)}"
        try:
            return transfer.probe(url, self.headers, size)
        except RegistryError as exc:
            if exc.status in (401, 403, 404):
                self.check(exc.status, str(exc))
            raise


def _digest(f: RepoFile) -> tuple[str, int]:
    """The blob digest and size the Hub gives for a file; files without them are not model files we can verify."""
    if f.lfs is None or f.lfs.size < 0:
        raise RegistryError(f"{f.rfilename} has no sha256 in the Hub's listing, so it cannot be verified")
    try:
        return check_digest("sha256:" + f.lfs.sha256), f.lfs.size
    except InvalidDigestError as exc:
        raise RegistryError(f"{f.rfilename}: the Hub gives {exc}") from None


def _parameters(info: gguf.GGUFFile) -> dict[str, ParamValue]:
    """Sampling defaults the GGUF's author recorded (general.sampling.*), as Ollama parameters."""
    params: dict[str, ParamValue] = {}
    for key, param in SAMPLING_PARAMS.items():
        value = info.metadata.get(f"general.sampling.{key}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            params[param] = value
    return params


def pull(store: Store, name: ModelName, *, settings: Settings, progress: Progress | None = None,
         cancel: threading.Event | None = None) -> ModelName:
    """Pulls `hf.co/<user>/<repo>[:<quant>]` and creates it in the store; returns the stored name.

    Raises RegistryError (with the status for the API), Cancelled when
    `cancel` is set; partial downloads stay for the next pull.
    """
    cancel = cancel or threading.Event()
    repo = f"{name.namespace}/{name.model}"
    hub = _Hub(settings, repo)
    emit(progress, "pulling manifest")
    listing = hub.info()
    files = choose(listing.siblings, name.tag, repo)
    blobs = [_digest(f) for f in files]
    log.info("pulling %s: %s", name, ", ".join(f.rfilename for f in files))
    check_space(store, sum(size for _, size in blobs) * (2 if len(files) > 1 else 1))

    for f, (digest, size) in zip(files, blobs, strict=True):
        download(store, digest, size, functools.partial(hub.locate, listing.sha, f, size), progress, cancel)
    if cancel.is_set():
        raise Cancelled()
    emit(progress, "verifying sha256 digest")
    for digest, _ in blobs:
        transfer.verify(store.blobs, digest)

    previous = previous_digests(store, name)
    with store.writing():
        path = _model_file(store, [digest for digest, _ in blobs])
        try:
            info = gguf.read(path)
        except gguf.GGUFError as exc:
            raise RegistryError(f"{files[0].rfilename} is not a usable GGUF file: {exc}", 400) from None
        modelfile = Modelfile(from_=str(path), system=default_system(info.chat_template),
                              parameters=_parameters(info))
        stored = create(store, name, modelfile, base_dir=path.parent,
                        progress=lambda u: emit(progress, u.status) if u.status == "writing manifest" else None)
    remove_replaced(store, previous, store.read(stored).digests(), progress)
    emit(progress, "success")
    return stored


def _model_file(store: Store, digests: list[str]) -> Path:
    """The model's one GGUF blob: the downloaded file itself, or the split parts merged into a new blob."""
    if len(digests) == 1:
        transfer.install(store.blobs, digests[0])
        return store.blobs.path(digests[0])
    parts = [transfer.partial_path(store.blobs, digest) for digest in digests]
    fd, tmp = temp_file(store.blobs.folder())
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                gguf_split.merge(parts, out)
            except gguf.GGUFError as exc:
                raise RegistryError(f"the split GGUF parts do not form one model: {exc}", 400) from None
            out.flush()
            os.fsync(out.fileno())
        digest = store.blobs.hash_file(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, store.blobs.path(digest))
        fsync_dir(store.blobs.root)
    finally:
        tmp.unlink(missing_ok=True)
    for part in parts:
        part.unlink(missing_ok=True)
    return store.blobs.path(digest)

