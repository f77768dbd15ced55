"""Model names, parsed and checked the way Ollama does before they touch a path.

A name is `[host/][namespace/]model[:tag]`. Every part becomes a directory
under `manifests/`, so a part that could climb out of the store (`..`, a
leading dot, a slash, a percent escape, an absolute path) is refused here,
once, and the rest of the store may join parts into paths without checking
again. Matching is case-insensitive, as in Ollama, while the case the user
typed is kept for display and for new manifest paths.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import msgspec

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Hosts that name a Hugging Face repository: hf.co/{user}/{repo}[:{quant}].
HUGGINGFACE_HOSTS = frozenset({"hf.co", "huggingface.co"})

# Ollama's limits (types/model/name.go): host up to 350 bytes, the rest up to 80.
MAX_HOST_LEN = 350
MAX_PART_LEN = 80
MAX_NAME_LEN = MAX_HOST_LEN + 3 * MAX_PART_LEN + 3

# First character alphanumeric or `_`: that alone rules out `.`, `..` and hidden files.
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class InvalidNameError(ValueError):
    """A model name that is not of the form Ollama accepts; the message says which part and why."""


class ModelName(msgspec.Struct, frozen=True, kw_only=True):
    """A fully qualified model name: all four parts present and valid.

    Equality and hashing are case-sensitive (the struct's own); use `key` to
    compare as Ollama does.
    """

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        # Checked again here so that a ModelName built directly, not by parse(), is as safe as a path part.
        name = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        _check("host", self.host, _HOST, MAX_HOST_LEN, name)
        _check("namespace", self.namespace, _NAMESPACE, MAX_PART_LEN, name)
        _check("model", self.model, _MODEL_OR_TAG, MAX_PART_LEN, name)
        _check("tag", self.tag, _MODEL_OR_TAG, MAX_PART_LEN, name)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Case-folded parts: two names with the same key are the same model."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    @property
    def manifest_path(self) -> PurePosixPath:
        """Where the manifest lives, relative to the store's `manifests/` folder."""
        return PurePosixPath(self.host, self.namespace, self.model, self.tag)

    @property
    def is_huggingface(self) -> bool:
        return self.host.lower() in HUGGINGFACE_HOSTS

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display(self) -> str:
        """The shortest form, as `ollama list` shows it: default host and namespace dropped."""
        if self.host.lower() != DEFAULT_HOST:
            return str(self)
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def same(self, other: ModelName) -> bool:
        return self.key == other.key


def _check(kind: str, part: str, pattern: re.Pattern[str], limit: int, name: str) -> str:
    if not part:
        raise InvalidNameError(f"invalid model name {name!r}: the {kind} is empty")
    if len(part) > limit:
        raise InvalidNameError(f"invalid model name {name[:60]!r}...: the {kind} is longer than {limit} characters")
    if ".." in part:
        raise InvalidNameError(f"invalid model name {name!r}: the {kind} {part!r} contains '..'")
    if not pattern.fullmatch(part):
        raise InvalidNameError(
            f"invalid model name {name!r}: the {kind} {part!r} must start with a letter, digit or '_' "
            f"and hold only {_allowed(kind)}")
    return part


def _allowed(kind: str) -> str:
    return {
        "host": "letters, digits, '_', '.', ':' and '-'",
        "namespace": "letters, digits, '_' and '-'",
    }.get(kind, "letters, digits, '_', '.' and '-'")


def parse(name: str) -> ModelName:
    """Parses a name as typed by a user or sent in a request, filling Ollama's defaults.

    Raises InvalidNameError naming the offending part.
    """
    raw = name.strip()
    for scheme in ("https://", "http://"):
        if raw.startswith(scheme):
            raw = raw[len(scheme):]
            break
    if not raw:
        raise InvalidNameError("a model name is required")
    if len(raw) > MAX_NAME_LEN:
        raise InvalidNameError(f"invalid model name {raw[:60]!r}...: longer than {MAX_NAME_LEN} characters")
    if raw.startswith("/") or raw.startswith("\\") or re.match(r"[A-Za-z]:[\\/]", raw):
        raise InvalidNameError(f"invalid model name {raw!r}: a path is not a model name")
    if "%" in raw or "\\" in raw or "@" in raw:
        raise InvalidNameError(f"invalid model name {raw!r}: '%', '\\' and '@' are not allowed")

    segments = raw.split("/")
    if len(segments) > 3:
        raise InvalidNameError(f"invalid model name {raw!r}: expected [host/][namespace/]model[:tag]")
    last = segments[-1]
    model, sep, tag = last.partition(":")
    if sep and ":" in tag:
        raise InvalidNameError(f"invalid model name {raw!r}: more than one ':' after the model")
    if sep and not tag:
        raise InvalidNameError(f"invalid model name {raw!r}: the tag after ':' is empty")
    host = segments[0] if len(segments) == 3 else DEFAULT_HOST
    namespace = segments[-2] if len(segments) >= 2 else DEFAULT_NAMESPACE

    # Checked here too so that the message quotes the name as the user typed it.
    return ModelName(
        host=_check("host", host, _HOST, MAX_HOST_LEN, raw),
        namespace=_check("namespace", namespace, _NAMESPACE, MAX_PART_LEN, raw),
        model=_check("model", model, _MODEL_OR_TAG, MAX_PART_LEN, raw),
        tag=_check("tag", tag or DEFAULT_TAG, _MODEL_OR_TAG, MAX_PART_LEN, raw),
    )


def from_manifest_path(relative: PurePosixPath) -> ModelName:
    """The name a manifest file stands for, given its path under `manifests/`.

    Files that do not form a valid name (stray files, editor backups) raise
    InvalidNameError so that listing can skip them.
    """
    parts = relative.parts
    if len(parts) != 4:
        raise InvalidNameError(f"{relative} is not host/namespace/model/tag")
    host, namespace, model, tag = parts
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)
