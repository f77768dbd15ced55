"""Ollama's model routes: /api/tags, /api/show, /api/ps, /api/copy, /api/delete, /api/create, /api/blobs.

The store is synchronous and touches the disk, so every call into it runs in
a worker thread; the event loop keeps serving streams meanwhile. The listing
routes (tags, show, ps) use threads of their own (`services.listing`), so
that they answer while generation keeps the shared ones busy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec
import orjson
from aiohttp import StreamReader, web

from ollama_py.api import codec, native
from ollama_py.api.options import Options
from ollama_py.engine.scheduler import Loaded
from ollama_py.server import models, streaming
from ollama_py.server.models import ResolvedModel, model_details
from ollama_py.server.services import listing, record, services
from ollama_py.settings import Settings
from ollama_py.store import create, gguf, huggingface, names, registry
from ollama_py.store.blobs import check_digest
from ollama_py.store.create import Progress, ProgressUpdate
from ollama_py.store.manifests import ModelNotFoundError, Store
from ollama_py.store.modelfile import (
    DEPRECATED_PARAMETERS,
    MESSAGE_ROLES,
    PARAMETER_TYPES,
    Message,
    Modelfile,
    render,
)
from ollama_py.store.names import ModelName

log = logging.getLogger(__name__)

# Keep-alive "forever" as a time: Ollama shows the far future, not an absent field.
_FOREVER = timedelta(days=365 * 100)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone().isoformat()


# ---- /api/tags ----------------------------------------------------------------------


def _list(store: Store) -> native.ListResponse:
    listed = []
    for m in store.models():
        details, caps = model_details(m.config), []
        try:
            model = models.read(store, m.name, m.name.display())
            caps = models.capabilities(model)
            details = msgspec.structs.replace(details, context_length=models.context_length(model))
        except (OSError, ValueError, LookupError) as exc:  # removed meanwhile, or weights that do not read
            log.warning("listing %s without its capabilities: %s", m.name.display(), exc)
        listed.append(native.ListModel(name=m.name.display(), model=m.name.display(),
                                       modified_at=_rfc3339(m.modified_at), size=m.size, digest=m.digest,
                                       details=details, capabilities=caps))
    return native.ListResponse(models=listed)


async def tags(request: web.Request) -> web.StreamResponse:
    return streaming.json(await listing(request, _list, services(request).store))


# ---- /api/show ----------------------------------------------------------------------


def _parameters_text(parameters: Options) -> str:
    """PARAMETERs as Ollama prints them: name padded to 30, value Go-quoted, one line per list item."""
    lines = []
    for key, value in msgspec.to_builtins(parameters).items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {orjson.dumps(item).decode()}")
    return "\n".join(lines)


def _show(store: Store, model: ResolvedModel, verbose: bool) -> native.ShowResponse:
    try:
        info = gguf.read(model.path, keep_array=1 << 20 if verbose else gguf.DEFAULT_KEEP_ARRAY)
        modified_at = store.modified_at(model.name)
        modelfile = create.to_modelfile(store, model.name)
    except FileNotFoundError:  # removed since it was resolved: its manifest, or the blobs only it used
        raise ModelNotFoundError(f"model '{model.asked}' not found") from None
    model_info = info.model_info()
    return native.ShowResponse(
        license="\n".join(modelfile.licenses),
        modelfile=render(modelfile, generated_for=model.name.display()),
        parameters=_parameters_text(model.parameters),
        template=models.shown_template(model),
        system=model.system or "",
        details=model.details(),
        messages=[native.ResponseMessage(role=m.role, content=m.content) for m in model.messages] or None,
        model_info=model_info,
        capabilities=models.capabilities(model),
        modified_at=_rfc3339(modified_at))


async def show(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.ShowRequest)
    svc = services(request)
    model = await listing(request, models.resolve, svc.store, svc.settings, req.target)
    record(request).model = model.name.display()
    return streaming.json(await listing(request, _show, svc.store, model, req.verbose))


# ---- /api/ps ------------------------------------------------------------------------


def _process(store: Store, entry: Loaded, expires_in: float) -> native.ProcessModel:
    name = names.parse(entry.name)
    try:
        manifest = store.read(name)
        details, digest = model_details(store.config(manifest)), store.manifest_digest(name)
    except ModelNotFoundError:  # removed from the store while loaded
        details, digest = native.ModelDetails(), ""
    expires = datetime.now(UTC) + (timedelta(seconds=expires_in) if expires_in < _FOREVER.total_seconds() else _FOREVER)
    # As Ollama reports it: weights, KV cache and compute buffers, and the part of that on the GPUs.
    # A model split across RPC workers counts as on the GPU, as llama.cpp types those devices.
    remote = any(p.endpoint for p in entry.placement)
    size, size_vram = ((entry.offload.size, entry.offload.size_vram) if entry.offload else
                       (entry.size, entry.size if remote else 0))
    return native.ProcessModel(name=name.display(), model=name.display(), size=size, digest=digest,
                               details=details, expires_at=_rfc3339(expires),
                               size_vram=size_vram, context_length=entry.runner.num_ctx,
                               placement=[native.LayerPlacement(device=p.device, endpoint=p.endpoint, layers=p.layers,
                                                                first_layer=p.first_layer, last_layer=p.last_layer)
                                          for p in entry.placement])


async def ps(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    now = asyncio.get_running_loop().time()
    # A model in use shows when it would expire if its requests ended now, as Ollama does.
    loaded = [(e, e.keep_alive if math.isinf(e.expires_at) else e.expires_at - now) for e in svc.engine.loaded()]
    found = await listing(request, lambda: [_process(svc.store, e, left) for e, left in loaded])
    return streaming.json(native.ProcessResponse(models=found))


# ---- /api/copy, /api/delete ---------------------------------------------------------


async def copy(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.CopyRequest)
    source, destination = models.parse_name(req.source), models.parse_name(req.destination)
    record(request).model = source.display()
    await asyncio.to_thread(services(request).store.copy, source, destination)
    return web.Response()


async def delete(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.ModelRequest)
    name = models.parse_name(req.target)
    record(request).model = name.display()
    svc = services(request)
    stored = await asyncio.to_thread(svc.store.resolve, name)
    if stored is None:
        raise ModelNotFoundError(f"model '{name.display()}' not found")
    await svc.engine.unload(str(stored))
    svc.engine.forget(str(stored))  # a model whose runner crashed at load may be created anew under this name
    await asyncio.to_thread(svc.store.delete, stored)
    return web.Response()


# ---- /api/create --------------------------------------------------------------------


def _blob_file(store: Store, field: str, filename: str, digest: str) -> Path:
    """A file named in `files`/`adapters`: a relative name, and an uploaded blob."""
    pure = PurePosixPath(filename.replace("\\", "/"))
    if not filename or pure.is_absolute() or ".." in pure.parts:
        raise codec.BadRequest(f"{field}: file path must be relative and stay inside the model: {filename[:100]!r}")
    path = store.blobs.path(check_digest(digest))
    if not path.is_file():
        raise codec.BadRequest(f"{field}: {filename}: blob {digest} not found; upload it with POST /api/blobs/{digest}")
    return path


def _ggufs(store: Store, field: str, files: dict[str, str] | None) -> list[Path]:
    paths = []
    for filename, digest in (files or {}).items():
        if not filename.lower().endswith(".gguf"):
            raise codec.BadRequest(f"{field}: {filename}: only GGUF files, or a safetensors model's files "
                                   "(.safetensors weights, config.json, tokenizer.json), are supported")
        paths.append(_blob_file(store, field, filename, digest))
    return paths


def _is_safetensors_model(files: dict[str, str] | None) -> bool:
    """Files that are a Hugging Face model folder, as Ollama tells them: any safetensors weights among them."""
    return any(name.lower().endswith(".safetensors") for name in files or {})


def _safetensors_files(store: Store, files: dict[str, str]) -> dict[str, Path]:
    """Each file of the folder (its path inside the folder) and the uploaded blob that holds it."""
    named = {PurePosixPath(name.replace("\\", "/")).as_posix(): _blob_file(store, "files", name, digest)
             for name, digest in files.items()}
    if "config.json" not in named:
        raise codec.BadRequest("files: a safetensors model needs its config.json")
    return named


def _link_folder(files: dict[str, Path], folder: Path) -> Path:
    """The model folder the converter reads, made of links to the blobs (nothing is copied)."""
    for name, blob in files.items():
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    return folder


def _parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """Checked PARAMETERs: known names, right types; deprecated ones dropped as Ollama drops them."""
    out: dict[str, Any] = {}
    for key, value in (parameters or {}).items():
        if key in DEPRECATED_PARAMETERS:
            continue
        if key not in PARAMETER_TYPES:
            raise codec.BadRequest(f"parameters: unknown parameter '{key}'")
        out[key] = [value] if key == "stop" and isinstance(value, str) else value
    try:
        msgspec.convert(out, Options)
    except msgspec.ValidationError as exc:
        raise codec.BadRequest(f"parameters: {exc}") from None
    return out


# Where a safetensors model's files are linked, inside the create's own empty folder; FROM names it.
SAFETENSORS_FOLDER = "files"


def _modelfile(store: Store, req: native.CreateRequest) -> Modelfile:
    """The request as the Modelfile the store builds from; FROM is a model name, an uploaded blob or the folder of
    a safetensors model's uploaded files (linked into the create's folder when it runs), never a user's path."""
    # One model, from `from`, a GGUF file or a safetensors model's files; any other GGUF file must be a projector
    # (the store checks which is which).
    safetensors = not req.from_ and _is_safetensors_model(req.files)
    weights = [] if safetensors else [str(w) for w in _ggufs(store, "files", req.files)]
    if req.from_:
        from_, projectors = str(models.parse_name(req.from_)), weights
    elif safetensors:
        from_, projectors = SAFETENSORS_FOLDER, []
    elif weights:
        from_, projectors = weights[0], weights[1:]
    else:
        raise codec.BadRequest("neither 'from' or 'files' was specified")
    for message in req.messages or ():
        if message.role not in MESSAGE_ROLES:
            raise codec.BadRequest(f"messages: role must be one of {', '.join(MESSAGE_ROLES)}, not {message.role!r}")
    licenses = [req.license] if isinstance(req.license, str) else list(req.license or [])
    return Modelfile(from_=from_, projectors=projectors, parameters=_parameters(req.parameters),
                     draft=_draft(store, req), template=req.template, system=req.system,
                     adapters=[str(p) for p in _ggufs(store, "adapters", req.adapters)], licenses=licenses,
                     messages=[Message(m.role, m.content) for m in req.messages or ()])


def _draft(store: Store, req: native.CreateRequest) -> str | None:
    """The DRAFT: the one uploaded GGUF file of `draft_files`, or the model `draft` names."""
    if req.draft and req.draft_files:
        raise codec.BadRequest("give a draft model in draft_files or draft, not both")
    if req.draft:
        return str(models.parse_name(req.draft))
    if not req.draft_files:
        return None
    files = _ggufs(store, "draft_files", req.draft_files)
    if len(files) != 1:
        raise codec.BadRequest(f"draft_files: expected one GGUF file, got {len(files)}")
    return str(files[0])


def _on_this_machine(host: str) -> bool:
    """A registry on loopback, which a create's pull may reach over plain http (Docker allows the same)."""
    hostname = urllib.parse.urlsplit(f"//{host}").hostname or ""
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


async def create_model(request: web.Request) -> web.StreamResponse:
    req = codec.decode(await request.read(), native.CreateRequest)
    name = models.parse_name(req.target)
    record(request).model = name.display()
    svc = services(request)
    modelfile = await asyncio.to_thread(_modelfile, svc.store, req)
    folder = (await asyncio.to_thread(_safetensors_files, svc.store, req.files or {})
              if not req.from_ and _is_safetensors_model(req.files) else None)

    def work(progress: Progress, cancel: threading.Event) -> ModelName:
        def pull(base: ModelName, relay: Progress | None) -> None:
            _pull(svc.store, svc.settings, base, _on_this_machine(base.host), relay or progress, cancel)

        # An empty folder as the Modelfile's folder: nothing the request names can be a local file, but the
        # safetensors files it uploaded.
        with tempfile.TemporaryDirectory() as empty:
            if folder is not None:
                _link_folder(folder, Path(empty) / SAFETENSORS_FOLDER)
            return create.create(svc.store, name, modelfile, base_dir=Path(empty), progress=progress,
                                 resolve_default=svc.settings, pull=pull, quantize=req.quantize or req.quantization,
                                 cancel=cancel)

    updates = streaming.progress_from_thread(work)
    if req.stream:
        return await streaming.ndjson(request, updates)
    return streaming.json(await streaming.last(updates))


# ---- /api/pull, /api/push ----------------------------------------------------------


def _pull(store: Store, settings: Settings, name: ModelName, insecure: bool, progress: Progress,
          cancel: threading.Event) -> None:
    """A registry pull; the default model, pinned and shipped in a package, is imported instead (offline)."""
    if name.same(names.parse(create.DEFAULT_MODEL)):
        if store.resolve(name) is None:
            create.import_default(store, settings, progress=progress)  # reports its own "success"
        else:
            progress(ProgressUpdate(status="success"))
        return
    if name.is_huggingface:
        huggingface.pull(store, name, settings=settings, progress=progress, cancel=cancel)
    else:
        registry.pull(store, name, settings=settings, insecure=insecure, progress=progress, cancel=cancel)


def _push(store: Store, settings: Settings, name: ModelName, insecure: bool, progress: Progress,
          cancel: threading.Event) -> None:
    registry.push(store, name, settings=settings, insecure=insecure, progress=progress, cancel=cancel)


Transfer = Callable[[Store, Settings, ModelName, bool, Progress, threading.Event], None]


async def _transfer(request: web.Request, operation: Transfer) -> web.StreamResponse:
    """Streams a pull's or push's progress in Ollama's words; the registry work runs in a thread."""
    req = codec.decode(await request.read(), native.TransferRequest)
    name = models.parse_name(req.target)
    record(request).model = name.display()
    svc = services(request)
    updates = streaming.progress_from_thread(
        lambda progress, cancel: operation(svc.store, svc.settings, name, req.insecure, progress, cancel))
    if req.stream:
        return await streaming.ndjson(request, updates)
    return streaming.json(await streaming.last(updates))


async def pull(request: web.Request) -> web.StreamResponse:
    return await _transfer(request, _pull)


async def push(request: web.Request) -> web.StreamResponse:
    return await _transfer(request, _push)


# ---- /api/blobs/:digest -------------------------------------------------------------


async def blob_exists(request: web.Request) -> web.StreamResponse:
    digest = check_digest(request.match_info["digest"])
    found = await asyncio.to_thread(services(request).store.blobs.exists, digest)
    return web.Response(status=200 if found else 404)


class _BodyReader:
    """The request body as a blocking file for the store's writer thread, read on the event loop."""

    def __init__(self, content: StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        self._content = content
        self._loop = loop

    def read(self, size: int = -1) -> bytes:
        return asyncio.run_coroutine_threadsafe(self._content.read(size), self._loop).result()


async def upload_blob(request: web.Request) -> web.StreamResponse:
    """Stores the body under its digest: 201 when new, 200 when already there, 400 when it hashes differently."""
    digest = check_digest(request.match_info["digest"])
    blobs = services(request).store.blobs
    if await asyncio.to_thread(blobs.exists, digest):
        return web.Response(status=200)
    reader = _BodyReader(request.content, asyncio.get_running_loop())
    await asyncio.to_thread(blobs.write_stream, reader, digest=digest)  # type: ignore[arg-type]
    return web.Response(status=201)
