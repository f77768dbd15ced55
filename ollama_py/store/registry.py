"""Pull and push models over the OCI distribution API, as `ollama pull` and `ollama push` do.

A model is a manifest (`/v2/<namespace>/<model>/manifests/<tag>`) naming
blobs by digest (`/v2/<namespace>/<model>/blobs/<digest>`). Whatever a
registry sends is untrusted until checked: the manifest is decoded against our
schema before any of its digests becomes a path, each layer's size must be
the registry's size before a byte is written, and each blob is hashed before
it enters the store. The manifest is written last, so a failed pull leaves no
model behind. The calls are synchronous; the server runs them in a thread and
passes a `cancel` event.

Credentials are sent only to the registry's own host: a token challenge
whose realm is elsewhere is refused (Ollama's CVE-2025-51471), and redirects
to a CDN go without them. They never appear in logs or messages.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import shutil
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from ollama_py.settings import Settings
from ollama_py.store import transfer
from ollama_py.store.create import Progress, ProgressUpdate
from ollama_py.store.manifests import (MAX_MANIFEST_BYTES, MEDIA_MANIFEST, Layer, Manifest, ManifestError,
                                       ModelNotFoundError, Store, decode_manifest)
from ollama_py.store.names import ModelName
from ollama_py.store.transfer import Cancelled, RegistryError, Response, origin, shown

log = logging.getLogger(__name__)

__all__ = ["Cancelled", "RegistryError", "credentials", "pull", "push"]

UPLOAD_CHUNK = 64 << 20  # blobs larger than this are uploaded in PATCH chunks of this size
_BLOCK = 1 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


def emit(progress: Progress | None, status: str, *, digest: str = "", total: int = 0, completed: int = 0) -> None:
    """One progress update, in Ollama's words, to a pull's or push's listener."""
    if progress is not None:
        progress(ProgressUpdate(status=status, digest=digest, total=total, completed=completed))


def short(digest: str) -> str:
    """The 12 hex digits Ollama shows in `pulling 1234567890ab`."""
    return digest[7:19]


# -- credentials ---------------------------------------------------------------


def credentials(settings: Settings, host: str) -> tuple[str, str] | None:
    """User and password for a registry host: OLLAMA_PY_REGISTRY_CREDENTIALS, else the credentials file.

    The file is Docker's config.json format (`{"auths": {"host": {"auth":
    base64("user:password")}}}`, or `username` and `password`), so the file
    `docker login` writes can be named. A broken file is logged, never shown.
    """
    if settings.registry_credentials:
        wanted, _, user_password = settings.registry_credentials.partition("=")
        if wanted.lower() == host.lower():
            user, _, password = user_password.partition(":")
            return user, password
    path = settings.registry_auth
    try:
        auths = json.loads(path.read_bytes()).get("auths", {})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring the registry credentials file %s: %s", path, type(exc).__name__)
        return None
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if urllib.parse.urlsplit(key if "//" in key else f"//{key}").netloc.lower() != host.lower():
            continue
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str):
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode()
            except ValueError:
                decoded = ""
            user, colon, password = decoded.partition(":")
            if user and colon:
                return user, password
            log.warning("ignoring the entry for %s in %s: 'auth' is not base64 of user:password", host, path)
            continue
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` as ("bearer", {realm, service, scope})."""
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), {m[1].lower(): m[2] or m[3] for m in _CHALLENGE_PARAM.finditer(params)}


class _Session:
    """One model's conversation with its registry: the base URL, the credentials and the current token."""

    def __init__(self, name: ModelName, settings: Settings, insecure: bool) -> None:
        self.name = name
        self.insecure = insecure
        self.base = f"{'http' if insecure else 'https'}://{name.host}"
        self.prefix = f"{self.base}/v2/{name.namespace}/{name.model}"
        self.credentials = credentials(settings, name.host)
        self.authorization = ""  # the header value: a token or basic credentials; never logged

    def authorized(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        """`headers` with our authorization, which only ever goes to the registry's own origin."""
        if self.authorization and origin(url) == origin(self.base):
            return {**headers, "Authorization": self.authorization}
        return headers

    def send(self, method: str, url: str, *, headers: dict[str, str] | None = None,
             body: Callable[[], bytes | Iterator[bytes]] | None = None, limit: int = 1 << 20) -> Response:
        """A request with the session's authorization; a 401 is answered once (token or basic) and retried.

        `body` makes the body, as a retry needs a fresh one.
        """
        def exchange() -> Response:
            sent = self.authorized(url, headers or {})
            if method in ("GET", "HEAD"):
                return transfer.follow(method, url, headers=sent, limit=limit)
            return transfer.request(method, url, headers=sent, body=body() if body else None, limit=limit)

        resp = exchange()
        if resp.status == 401 and self._authenticate(resp):
            resp = exchange()
        return resp

    def _authenticate(self, resp: Response) -> bool:
        """Gets credentials for a 401's challenge; False when there are none to try."""
        scheme, params = _challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self.credentials is None:
                return False
            self.authorization = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            return True
        if scheme != "bearer" or not params.get("realm"):
            return False
        self.authorization = "Bearer " + self._token(params)
        return True

    def _token(self, params: dict[str, str]) -> str:
        realm = params["realm"]
        scheme, host, port = origin(realm)
        own_scheme, own_host, own_port = origin(self.base)
        if (host, port) != (own_host, own_port):
            raise RegistryError(f"realm host {host!r} does not match original host {own_host!r}: "
                                "refusing to ask another host for a token")
        if scheme != own_scheme and not self.insecure:
            raise RegistryError(f"the token realm {shown(realm)} is not https")
        query = [("service", params.get("service", ""))] + [("scope", s) for s in params.get("scope", "").split()]
        split = urllib.parse.urlsplit(realm)
        url = split._replace(query="&".join(q for q in [split.query, urllib.parse.urlencode(query)] if q)).geturl()
        headers = {}
        if self.credentials is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        answer = transfer.follow("GET", url, headers=headers)
        if answer.status in (401, 403):
            raise self._unauthorized()
        if answer.status != 200:
            raise RegistryError(f"token request to {shown(realm)} failed: {answer.status}")
        try:
            body = json.loads(answer.body)
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{shown(realm)} answered without a token")
        return token

    def _unauthorized(self) -> RegistryError:
        if self.credentials is None:
            return RegistryError(f"unauthorized: {self.name.host} needs credentials; set "
                                 "OLLAMA_PY_REGISTRY_CREDENTIALS or OLLAMA_PY_REGISTRY_AUTH", 401)
        return RegistryError(f"unauthorized: {self.name.host} refused the credentials for user "
                             f"{self.credentials[0]!r}", 401)

    def check(self, resp: Response, what: str, *, ok: tuple[int, ...]) -> Response:
        """The response when its status is one of `ok`, else a RegistryError in the registry's words."""
        if resp.status in ok:
            return resp
        if resp.status == 401:
            raise self._unauthorized()
        raise RegistryError(f"{what}: {self.name.host} answered {resp.status} {transfer.error_text(resp)}".strip(),
                            transfer.upstream_status(resp.status))

    def location(self, resp: Response) -> str:
        """Where an upload goes next; plain http is refused unless the pull or push is insecure."""
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.name.host} started an upload without saying where (no Location)")
        url = urllib.parse.urljoin(resp.url, location)
        if urllib.parse.urlsplit(url).scheme != "https" and not self.insecure:
            raise RegistryError(f"{self.name.host} sent the upload to {shown(url)}, which is not https")
        return url


# -- pull ----------------------------------------------------------------------


def pull(store: Store, name: ModelName, *, settings: Settings, insecure: bool = False,
         progress: Progress | None = None, cancel: threading.Event | None = None) -> ModelName:
    """Pulls a model from an OCI registry into the store and returns its stored name (hf.co names go to
    `huggingface.pull`, which builds on this module's downloads).

    Raises RegistryError (with the status for the API), Cancelled when
    `cancel` is set; partial downloads stay for the next pull to resume.
    """
    cancel = cancel or threading.Event()
    session = _Session(name, settings, insecure)
    emit(progress, "pulling manifest")
    resp = session.send("GET", f"{session.prefix}/manifests/{name.tag}", headers={"Accept": MEDIA_MANIFEST},
                        limit=MAX_MANIFEST_BYTES)
    if resp.status == 404:
        raise RegistryError(f"model '{name.display()}' not found in {name.host}", 404)
    session.check(resp, "pull model manifest", ok=(200,))
    if not resp.complete:
        raise RegistryError(f"the manifest of {name.display()} is larger than {MAX_MANIFEST_BYTES} bytes")
    manifest = _checked_manifest(resp.body, name)
    layers = list({layer.digest: layer for layer in [*manifest.layers, manifest.config]}.values())
    missing = [layer for layer in layers if not store.blobs.exists(layer.digest)]
    check_space(store, sum(layer.size for layer in missing))

    for layer in layers:
        download(store, layer.digest, layer.size, functools.partial(_locate, session, layer), progress, cancel)
    if cancel.is_set():
        raise Cancelled()

    emit(progress, "verifying sha256 digest")
    for layer in missing:
        transfer.verify(store.blobs, layer.digest)
    previous = previous_digests(store, name)
    with store.writing():
        for layer in missing:
            transfer.install(store.blobs, layer.digest)
        emit(progress, "writing manifest")
        stored = store.write(name, manifest, data=resp.body)
    remove_replaced(store, previous, manifest.digests(), progress)
    emit(progress, "success")
    return stored


def download(store: Store, digest: str, size: int, locate: Callable[[], transfer.Source], progress: Progress | None,
             cancel: threading.Event) -> None:
    """Fetches a blob the store lacks into its partial file, reporting its bytes as `pulling <digest>`."""
    status = f"pulling {short(digest)}"

    def report(done: int) -> None:
        emit(progress, status, digest=digest, total=size, completed=done)

    if not store.blobs.exists(digest):
        report(0)
        transfer.fetch(store.blobs, digest, size, locate, progress=report, cancel=cancel)
    report(size)


def _checked_manifest(data: bytes, name: ModelName) -> Manifest:
    """The manifest, refused before any path is built when its digests, sizes or types are not sound."""
    try:
        manifest = decode_manifest(data, where=f"the manifest {name.host} sent for {name.display()}")
    except ManifestError as exc:
        raise RegistryError(str(exc)) from None
    if manifest.schema_version != 2 or manifest.media_type not in ("", MEDIA_MANIFEST):
        raise RegistryError(f"{name.host} sent a manifest of type {manifest.media_type or '?'!r} "
                            f"(schema {manifest.schema_version}); only Docker v2 manifests hold models")
    if manifest.config.size > MAX_MANIFEST_BYTES:
        raise RegistryError(f"the manifest of {name.display()} announces a config of {manifest.config.size} bytes")
    sizes: dict[str, int] = {}
    for layer in [manifest.config, *manifest.layers]:
        if sizes.setdefault(layer.digest, layer.size) != layer.size:
            raise RegistryError(f"the manifest of {name.display()} gives {layer.digest} two sizes")
    return manifest


def check_space(store: Store, need: int) -> None:
    """Refuses a pull the disk cannot hold before it starts, rather than failing full near its end."""
    store.blobs.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.blobs.root).free
    if need > free:
        raise RegistryError(f"not enough disk space: the model needs {need} more bytes, {free} are free", 507)


def _locate(session: _Session, layer: Layer) -> transfer.Source:
    """The blob's final URL (a CDN's, after redirects) and size, asking the registry with our credentials."""
    url = f"{session.prefix}/blobs/{layer.digest}"
    try:
        return transfer.probe(url, session.authorized(url, {}), layer.size)
    except RegistryError as exc:
        if exc.status != 401:
            raise
    # A token for this scope is missing: a HEAD answers the challenge, and the probe then carries the token.
    session.check(session.send("HEAD", url), f"pulling {layer.digest}", ok=(200,))
    return transfer.probe(url, session.authorized(url, {}), layer.size)


def previous_digests(store: Store, name: ModelName) -> set[str]:
    """The blobs of the model this pull replaces, so that those no other model uses can be removed."""
    try:
        return store.read(name).digests()
    except (ModelNotFoundError, ManifestError):
        return set()


def remove_replaced(store: Store, previous: set[str], current: set[str], progress: Progress | None) -> None:
    """Removes the layers of the model a pull replaced that no model uses now, as Ollama does (not with NOPRUNE)."""
    unused = previous - current
    if unused and not store.noprune:
        emit(progress, "removing unused layers")
        store.remove_unused(unused)


# -- push ----------------------------------------------------------------------


def push(store: Store, name: ModelName, *, settings: Settings, insecure: bool = False,
         progress: Progress | None = None, cancel: threading.Event | None = None) -> None:
    """Pushes a model: each blob the registry lacks (HEAD first), then the manifest as stored.

    Raises RegistryError (with the status for the API), Cancelled when `cancel` is set.
    """
    cancel = cancel or threading.Event()
    emit(progress, "retrieving manifest")
    try:
        data = store.read_bytes(name)
        manifest = store.read(name)
    except ModelNotFoundError as exc:
        raise RegistryError(str(exc), 404) from None
    session = _Session(name, settings, insecure)
    for layer in list({layer.digest: layer for layer in [*manifest.layers, manifest.config]}.values()):
        if cancel.is_set():
            raise Cancelled("push cancelled")
        _upload(store, session, layer, progress, cancel)
    emit(progress, "pushing manifest")
    resp = session.send("PUT", f"{session.prefix}/manifests/{name.tag}", headers={"Content-Type": MEDIA_MANIFEST},
                        body=lambda: data)
    session.check(resp, "pushing manifest", ok=(200, 201))
    emit(progress, "success")


def _upload(store: Store, session: _Session, layer: Layer, progress: Progress | None,
            cancel: threading.Event) -> None:
    status = f"pushing {short(layer.digest)}"
    path = store.blobs.path(layer.digest)
    url = f"{session.prefix}/blobs/{layer.digest}"
    if session.check(session.send("HEAD", url), f"checking {layer.digest}", ok=(200, 404)).status == 200:
        emit(progress, status, digest=layer.digest, total=layer.size, completed=layer.size)
        return
    emit(progress, status, digest=layer.digest, total=layer.size, completed=0)
    started = session.check(session.send("POST", f"{session.prefix}/blobs/uploads/"), f"uploading {layer.digest}",
                            ok=(202,))
    location = session.location(started)
    sent = 0

    def report(n: int) -> None:
        nonlocal sent
        sent += n
        emit(progress, status, digest=layer.digest, total=layer.size, completed=sent)

    # A small blob goes in the closing PUT; a large one in PATCH chunks first (the registry keeps the offset).
    rest = 0
    if layer.size > UPLOAD_CHUNK:
        for first in range(0, layer.size, UPLOAD_CHUNK):
            last = min(first + UPLOAD_CHUNK, layer.size)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(last - first),
                       "Content-Range": f"{first}-{last - 1}"}
            resp = session.send("PATCH", location, headers=headers,
                                body=functools.partial(_read, path, first, last, report, cancel))
            location = session.location(session.check(resp, f"uploading {layer.digest}", ok=(202,)))
        rest = layer.size
    separator = "&" if "?" in location else "?"
    resp = session.send("PUT", f"{location}{separator}digest={urllib.parse.quote(layer.digest)}",
                        headers={"Content-Type": "application/octet-stream", "Content-Length": str(layer.size - rest)},
                        body=functools.partial(_read, path, rest, layer.size, report, cancel))
    session.check(resp, f"uploading {layer.digest}", ok=(201, 204))
    emit(progress, status, digest=layer.digest, total=layer.size, completed=layer.size)


def _read(path: Path, first: int, last: int, report: Callable[[int], None], cancel: threading.Event) -> Iterator[bytes]:
    """Bytes first..last-1 of a blob, a block at a time, as an upload body that reports and can be cancelled."""
    with path.open("rb") as f:
        f.seek(first)
        pos = first
        while pos < last:
            if cancel.is_set():
                raise Cancelled("push cancelled")
            block = f.read(min(_BLOCK, last - pos))
            if not block:
                raise RegistryError(f"{path.name} is shorter than its manifest says", 500)
            pos += len(block)
            report(len(block))
            yield block
