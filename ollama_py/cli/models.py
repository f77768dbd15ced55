"""Model operations that both the commands and the REPL perform: pull with progress, find-or-pull,
and turning a Modelfile into an /api/create request.

`create` parses the Modelfile here, in the client, as Ollama's CLI does: a
FROM or ADAPTER that names a local file, and each file of a safetensors
model folder that FROM names, is uploaded as a blob first
(`/api/blobs/<digest>`, skipped when the server already has it), so the
server never reads paths from the client's machine.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from ollama_py.api.native import CreateRequest, Message, ProgressResponse, ShowRequest, ShowResponse, TransferRequest
from ollama_py.cli.client import Client, ClientError, ResponseError
from ollama_py.cli.progress import ProgressView
from ollama_py.store.modelfile import Modelfile

log = logging.getLogger(__name__)


def follow(updates: Iterable[ProgressResponse], view: ProgressView) -> None:
    """Draws a progress stream (pull, push, create) until it ends."""
    for update in updates:
        view.update(update.status, update.digest, update.total, update.completed)


def transfer(client: Client, direction: Literal["pull", "push"], model: str, *, insecure: bool = False) -> None:
    """`pull` or `push` a model, with a bar per blob."""
    request = TransferRequest(model=model, insecure=insecure)
    with ProgressView() as view:
        follow(client.stream(f"/api/{direction}", request, type=ProgressResponse), view)


def show(client: Client, model: str) -> ShowResponse:
    return client.call("POST", "/api/show", ShowRequest(model=model), type=ShowResponse)


def show_or_pull(client: Client, model: str) -> ShowResponse:
    """The model's details, pulling it first when the server does not have it (as `ollama run` does)."""
    try:
        return show(client, model)
    except ResponseError as exc:
        if exc.status != 404:
            raise
    log.debug("%s is not on the server; pulling it", model)
    transfer(client, "pull", model)
    return show(client, model)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _upload(client: Client, path: Path, view: ProgressView) -> str:
    """The file's digest, once the server holds it as a blob (Ollama's createBlob)."""
    view.update(f"copying file {path.name}")
    digest = _sha256(path)
    if not client.has_blob(digest):
        size = path.stat().st_size
        client.push_blob(digest, path, lambda done: view.update("copying file", digest, size, done))
    return digest


def _local_path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _local_file(value: str, base: Path) -> Path | None:
    """The GGUF file an ADAPTER or a projector's FROM names (relative to the Modelfile, `~` expanded), or None
    when there is none."""
    path = _local_path(value, base)
    if path.is_dir():
        raise ClientError(f"{value}: a folder, where one GGUF file is expected")
    return path if path.is_file() else None


def _folder_files(folder: Path) -> dict[str, Path]:
    """What a conversion reads from a safetensors model folder, by its path inside the folder, picked as Ollama's
    CLI picks them: the weights, the JSON files (a sentence-embedding model keeps one a level down), the
    SentencePiece model and a standalone chat template."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ClientError(f"{folder}: no .safetensors files; a model folder holds safetensors weights and "
                          "config.json (or give a GGUF file)")
    picked = [*weights, *sorted(folder.glob("*.json")), *sorted(folder.glob("*/*.json")),
              *(p for p in (folder / "tokenizer.model", folder / "chat_template.jinja") if p.is_file())]
    return {p.relative_to(folder).as_posix(): p for p in picked if p.is_file()}


def _source_files(client: Client, value: str, base: Path, view: ProgressView) -> dict[str, str] | None:
    """The `files` of a FROM that names a local GGUF file or model folder, each uploaded as a blob; None for a
    model name."""
    path = _local_path(value, base)
    if path.is_dir():
        return {name: _upload(client, file, view) for name, file in _folder_files(path).items()}
    return {path.name: _upload(client, path, view)} if path.is_file() else None


def create_request(client: Client, name: str, modelfile: Modelfile, base: Path,
                   view: ProgressView, *, quantize: str = "") -> CreateRequest:
    """The /api/create body for a parsed Modelfile; its local files are uploaded as blobs first."""
    source = _source_files(client, modelfile.from_, base, view)
    files = dict(source or {})
    for projector in modelfile.projectors:
        path = _local_file(projector, base)
        if path is None:
            raise ClientError(f"FROM {projector}: no such file (a second FROM names a projector's GGUF)")
        files[path.name] = _upload(client, path, view)
    adapters: dict[str, str] = {}
    for adapter in modelfile.adapters:
        path = _local_file(adapter, base)
        if path is None:
            raise ClientError(f"ADAPTER {adapter}: no such file")
        adapters[path.name] = _upload(client, path, view)
    draft_file = _local_file(modelfile.draft, base) if modelfile.draft is not None else None
    return CreateRequest(
        model=name, from_="" if source else modelfile.from_, files=files or None, adapters=adapters or None,
        draft_files={draft_file.name: _upload(client, draft_file, view)} if draft_file is not None else None,
        draft=modelfile.draft if modelfile.draft is not None and draft_file is None else "",
        template=modelfile.template, system=modelfile.system, parameters=modelfile.parameters or None,
        messages=[Message(role=m.role, content=m.content) for m in modelfile.messages] or None,
        license=modelfile.licenses or None, quantize=quantize)


def create(client: Client, name: str, modelfile: Modelfile, base: Path, *, quantize: str = "") -> None:
    with ProgressView() as view:
        request = create_request(client, name, modelfile, base, view, quantize=quantize)
        follow(client.stream("/api/create", request, type=ProgressResponse), view)
