"""A request's model: its name resolved in the store, its Modelfile, and how to load and sample it.

Options are laid over each other as Ollama does: engine defaults, then the
Modelfile's PARAMETERs, then the request's `options`. The bounds an operator
sets (OLLAMA_PY_MAX_NUM_CTX, OLLAMA_PY_MAX_NUM_PREDICT) apply last, as caps:
a request asking for more gets the most the server gives, as Ollama caps a
context beyond the model's.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ollama_py.api import native
from ollama_py.api.codec import BadRequest
from ollama_py.api.options import Duration, Options, from_parameters
from ollama_py.engine.goprompt import parse_template
from ollama_py.engine.runner import RunnerOptions
from ollama_py.engine.backend import LoadSpec
from ollama_py.engine.scheduler import parse_keep_alive
from ollama_py.engine.types import Sampling
from ollama_py.settings import Settings
from ollama_py.store import create, gguf, names
from ollama_py.store.manifests import (
    MEDIA_ADAPTER,
    MEDIA_DRAFT,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Manifest,
    ModelConfig,
    Store,
)
from ollama_py.store.modelfile import Message
from ollama_py.store.names import ModelName

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    """A stored model and what its Modelfile says."""

    name: ModelName  # as stored (the case on disk)
    asked: str  # as the request wrote it: what errors name, as Ollama's do
    manifest: Manifest
    config: ModelConfig
    path: Path  # the GGUF weights
    parameters: Options
    template: str | None
    system: str | None
    messages: tuple[Message, ...]
    adapters: tuple[Path, ...] = ()  # LoRA adapters the Modelfile's ADAPTER names
    projector: Path | None = None  # a vision model's projector (mmproj GGUF): the model takes images
    draft: Path | None = None  # a draft model (GGUF) for speculative decoding, the Modelfile's DRAFT

    @property
    def key(self) -> str:
        """The scheduler's name for it: one loaded instance per stored name."""
        return str(self.name)

    def details(self) -> native.ModelDetails:
        return model_details(self.config)


def model_details(config: ModelConfig) -> native.ModelDetails:
    return native.ModelDetails(format=config.model_format, family=config.model_family,
                               families=config.model_families, parameter_size=config.model_type,
                               quantization_level=config.file_type)


def parse_name(raw: str) -> ModelName:
    """A request's model name; Ollama's messages for the empty and the malformed name."""
    if not raw.strip():
        raise BadRequest("model is required")
    return names.parse(raw)


def resolve(store: Store, settings: Settings, raw: str) -> ResolvedModel:
    """Reads a model from the store (importing the default model on first use). Blocking: run it in a thread."""
    return read(store, create.resolve(store, parse_name(raw), settings), raw)


def read(store: Store, name: ModelName, asked: str) -> ResolvedModel:
    """A stored model by its stored name. Blocking: run it in a thread."""
    manifest = store.read(name)
    weights = manifest.layer(MEDIA_MODEL)
    if weights is None:
        raise ValueError(f"{name.display()} has no model weights: it cannot generate or embed")
    template = manifest.layer(MEDIA_TEMPLATE) or manifest.layer(MEDIA_PROMPT)
    system = manifest.layer(MEDIA_SYSTEM)
    params = manifest.layer(MEDIA_PARAMS)
    messages = manifest.layer(MEDIA_MESSAGES)
    return ResolvedModel(
        name=name, asked=asked, manifest=manifest, config=store.config(manifest), path=store.blobs.path(weights.digest),
        parameters=from_parameters(msgspec.json.decode(store.text(params))) if params else Options(),
        template=store.text(template) if template else None,
        system=store.text(system) if system else None,
        messages=tuple(msgspec.json.decode(store.text(messages), type=list[Message])) if messages else (),
        adapters=tuple(store.blobs.path(layer.digest) for layer in manifest.layers_of(MEDIA_ADAPTER)),
        projector=store.blobs.path(projector.digest) if (projector := manifest.layer(MEDIA_PROJECTOR)) else None,
        draft=store.blobs.path(draft.digest) if (draft := manifest.layer(MEDIA_DRAFT)) else None)


# Jinja's statement tag; Go templates never use it, so it tells the two syntaxes apart.
_JINJA_TAG = "{%"


def jinja_template(model: ResolvedModel) -> str:
    """A TEMPLATE written in Jinja, or "".

    Such a TEMPLATE is an ollama-py extension: llama.cpp renders it in place of
    the GGUF's own template (a chat template pasted from Hugging Face gives a
    model its tool calling).
    """
    template = model.template or ""
    return template if _JINJA_TAG in template else ""


def go_template(model: ResolvedModel) -> str:
    """The TEMPLATE in Ollama's Go syntax for the engine, or "" for the GGUF's own (or a Jinja TEMPLATE's).

    The engine itself treats the template our import derived from the GGUF's as the GGUF's own.
    """
    template = model.template or ""
    return "" if _JINJA_TAG in template else template


@functools.lru_cache(maxsize=64)
def _gguf_facts(path: Path, mtime_ns: int) -> tuple[bool, str, int]:
    """(embedding-only, Jinja chat template, context length) of a weights file; blobs never change in place,
    the mtime only guards against a file replaced under the same name."""
    info = gguf.read(path)
    arch = info.architecture or ""
    embedding = f"{arch}.pooling_type" in info.metadata and not info.chat_template
    length = info.metadata.get(f"{arch}.context_length")
    return embedding, info.chat_template or "", length if isinstance(length, int) else 0


def _facts(model: ResolvedModel) -> tuple[bool, str, int]:
    return _gguf_facts(model.path, model.path.stat().st_mtime_ns)


def capabilities(model: ResolvedModel) -> list[str]:
    """What the model can do, decided as Ollama decides it, from the template that renders its prompts.

    /api/show, /api/tags and the refusal of requests (`require`) all read this one decision, so what the
    server advertises is what it accepts.
    """
    embedding, chat_template, _ = _facts(model)
    caps = ["embedding"] if embedding else ["completion"]
    source = go_template(model)
    if source and source != create.derived_template(chat_template):
        template = parse_template(source)
        tools, insert, thinking = template.supports_tools, template.supports_insert, template.supports_thinking
    else:  # a Jinja template renders: the GGUF's own, or the Modelfile's
        jinja = jinja_template(model) or chat_template
        tools, insert, thinking = "tools" in jinja, False, "<think>" in jinja or "enable_thinking" in jinja
    caps += [name for name, able in (("tools", tools), ("insert", insert), ("thinking", thinking)) if able]
    if model.manifest.layer(MEDIA_PROJECTOR) is not None:
        caps.append("vision")
    return caps


def shown_template(model: ResolvedModel) -> str:
    """The template /api/show reports: the TEMPLATE, else the GGUF's own Jinja chat template.

    Clients (LiteLLM, Continue) read it to tell whether a model does tools or fill-in-the-middle, so a model
    whose template our import did not recognise still shows the one that renders its prompts.
    Blocking (reads the GGUF's header once per file): run it in a thread.
    """
    return model.template or _facts(model)[1]


def context_length(model: ResolvedModel) -> int:
    """The context the model was trained for (its GGUF's `<arch>.context_length`); 0 when it does not say."""
    return _facts(model)[2]


def require(model: ResolvedModel, *needs: str, route: str = "generate") -> None:
    """Ollama's CheckCapabilities: refuses (400) what the model cannot do, naming the model as it was asked for.

    A model that cannot complete at all (an embedding model) is refused in Ollama's words for the route asked
    of it, `"NAME" does not support generate` or `chat`, the name quoted as Go's %q quotes it.
    Blocking (reads the GGUF's header once per file): run it in a thread.
    """
    able = capabilities(model)
    if "completion" in needs and "completion" not in able:
        raise BadRequest(f"{msgspec.json.encode(model.asked).decode()} does not support {route}")
    missing = [need for need in needs if need not in able]
    if missing:
        raise BadRequest(f"{model.asked} does not support {', '.join(missing)}")


def keep_alive(value: Duration | None) -> float | None:
    """Seconds to keep the model after the request (None: the server's default)."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise BadRequest(f"keep_alive: {exc}") from None


@dataclass(frozen=True)
class Plan:
    """How to load the model and how to sample this request's answer."""

    spec: LoadSpec
    sampling: Sampling


def plan(settings: Settings, model: ResolvedModel, request: Options | None) -> Plan:
    opts = request.over(model.parameters) if request is not None else model.parameters
    num_ctx = opts.num_ctx or settings.context_length
    if num_ctx > settings.max_num_ctx:
        # Capped, not refused, as Ollama caps a num_ctx beyond what the model was trained for.
        log.info("num_ctx %d lowered to this server's limit %d", num_ctx, settings.max_num_ctx)
        num_ctx = settings.max_num_ctx
    # A batch longer than the context is never used, and its buffers would be allocated all the same; more
    # threads than cores only slow each other down.
    runner = RunnerOptions(num_ctx=num_ctx, num_parallel=settings.num_parallel,
                           num_batch=min(opts.num_batch or 512, num_ctx),
                           num_thread=min(opts.num_thread or 0, os.cpu_count() or 1),
                           flash_attention=settings.flash_attention, cpu_attention=settings.cpu_attention,
                           kv_cache_type=settings.kv_cache_type,
                           cache_ram=settings.cache_ram << 20 if settings.cache_ram > 0 else settings.cache_ram,
                           cache_dir=settings.prompt_cache_dir, cache_disk=settings.prompt_cache_disk << 20,
                           draft_max=settings.draft_max,
                           cached_first=settings.cached_first * settings.num_parallel)
    spec = LoadSpec(path=model.path, runner=runner, num_gpu=-1 if opts.num_gpu is None else opts.num_gpu,
                    template=jinja_template(model), adapters=model.adapters, projector=model.projector,
                    draft=model.draft)
    sampling = Sampling()
    fields = {f: v for f in Sampling.__struct_fields__ if (v := getattr(opts, f, None)) is not None}
    if "stop" in fields:
        fields["stop"] = tuple(fields["stop"])
    # The penalty's window is a ring buffer llama.cpp allocates in full: never longer than the context
    # (-1 is the whole context, as llama-server takes it).
    if "repeat_last_n" in fields:
        fields["repeat_last_n"] = num_ctx if fields["repeat_last_n"] < 0 else min(fields["repeat_last_n"], num_ctx)
    sampling = msgspec.structs.replace(sampling, **fields)
    # -1 (until a stop) and -2 (until the context is full) both end at the context's end here.
    limit = settings.max_num_predict
    wanted = sampling.num_predict
    bounded = limit if wanted < 0 else min(wanted, limit)
    if bounded != wanted and wanted >= 0:
        log.info("num_predict %d lowered to this server's limit %d", wanted, limit)
    return Plan(spec=spec, sampling=msgspec.structs.replace(sampling, num_predict=bounded))
