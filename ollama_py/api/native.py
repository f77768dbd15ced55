"""Ollama's native API (`/api/*`), field for field as api/types.go has it.

Responses use `omit_defaults` where Go says `omitempty`; fields Go always sends
have no default here, so they are always encoded. Durations are nanoseconds,
times RFC 3339. Request fields Go accepts as null are `| None`.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from ollama_py.api.options import Duration, Format, Options, Think

# The Ollama API level we speak. Clients gate features on /api/version (VS Code's
# Ollama provider wants at least 0.6.4), so we report the Ollama version whose
# API we match rather than our own package version (that one is on /health).
API_VERSION = "0.13.0"

TopLogprobs = Annotated[int, Meta(ge=0, le=20)]


class ProgressUpdate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One step of a pull, push or create, in Ollama's words (`pulling manifest`, `writing manifest`, `success`)."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0


ProgressResponse = ProgressUpdate
"""Progress of create, pull and push: `status`, and `digest`, `total`, `completed` while bytes move."""


class ErrorResponse(msgspec.Struct):
    error: str


class VersionResponse(msgspec.Struct):
    version: str


# ---- messages and tools -------------------------------------------------------------


class ToolCallFunction(msgspec.Struct, kw_only=True):
    index: int = 0
    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str = ""
    function: ToolCallFunction


class Message(msgspec.Struct, kw_only=True):
    """A chat message as a request sends it."""

    role: str
    content: str = ""
    thinking: str = ""
    images: list[str] | None = None  # base64
    tool_calls: list[ToolCall] | None = None
    tool_name: str = ""  # the tool whose result a "tool" message carries
    tool_call_id: str = ""

    def __post_init__(self) -> None:
        self.role = self.role.lower()  # Ollama lower-cases roles on parse


class ResponseMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A message as the server sends it: `role` and `content` always, the rest when there is some."""

    role: str
    content: str
    thinking: str = ""
    tool_calls: list[ToolCall] | None = None
    images: list[str] | None = None


class ToolFunction(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)  # a JSON schema of the arguments


class Tool(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str = "function"
    function: ToolFunction


# ---- generation ---------------------------------------------------------------------


class TokenLogprob(msgspec.Struct, kw_only=True, omit_defaults=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class Logprob(msgspec.Struct, kw_only=True, omit_defaults=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TokenLogprob] | None = None


class GenerateRequest(msgspec.Struct, kw_only=True):
    model: str
    prompt: str = ""  # empty: load the model (and with keep_alive 0, unload it)
    suffix: str = ""  # fill-in-the-middle text after the answer
    system: str = ""  # replaces the Modelfile's SYSTEM
    template: str = ""  # replaces the Modelfile's TEMPLATE
    context: list[int] | None = None  # Deprecated: send the conversation to /api/chat instead.
    stream: bool = True
    raw: bool = False  # the prompt goes to the model as it is, without the template
    format: Format | None = None
    keep_alive: Duration | None = None
    images: list[str] | None = None
    options: Options | None = None
    think: Think | None = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: TopLogprobs = 0

    def __post_init__(self) -> None:
        if self.raw and (self.template or self.system or self.context):
            raise ValueError("raw mode does not support template, system, or context")


class Metrics(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The counters of a final chunk; durations in nanoseconds."""

    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    # How many of prompt_eval_count came from the cache instead of being evaluated; sent, even as 0, on
    # final chunks only (Ollama's *int).
    prompt_eval_cached_count: int | None = None
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class GenerateResponse(Metrics, kw_only=True, omit_defaults=True):
    model: str
    created_at: str
    response: str
    thinking: str = ""
    done: bool
    done_reason: str = ""  # stop | length | load | unload
    context: list[int] | None = None  # Deprecated: returned for clients that still send it back.
    logprobs: list[Logprob] | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: list[Message] | None = None  # empty: load the model (and with keep_alive 0, unload it)
    tools: list[Tool] | None = None
    format: Format | None = None
    options: Options | None = None
    stream: bool = True
    keep_alive: Duration | None = None
    think: Think | None = None
    truncate: bool = True  # drop the oldest messages when the conversation does not fit
    shift: bool = True
    logprobs: bool = False
    top_logprobs: TopLogprobs = 0


class ChatResponse(Metrics, kw_only=True, omit_defaults=True):
    model: str
    created_at: str
    message: ResponseMessage
    done: bool
    done_reason: str = ""
    logprobs: list[Logprob] | None = None


# ---- embeddings ---------------------------------------------------------------------


class EmbedRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[str] = ""  # empty: load the model only
    truncate: bool = True  # false: an input over the context is an error instead of being cut
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    keep_alive: Duration | None = None
    options: Options | None = None


class EmbedResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """Deprecated: use EmbedRequest (/api/embed), which takes several inputs."""

    model: str
    prompt: str = ""
    keep_alive: Duration | None = None
    options: Options | None = None


class EmbeddingResponse(msgspec.Struct):
    embedding: list[float]


# ---- models -------------------------------------------------------------------------


class ModelDetails(msgspec.Struct, kw_only=True):
    parent_model: str = ""
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    # In /api/tags only, as Ollama lists them; left out elsewhere.
    context_length: int | msgspec.UnsetType = msgspec.UNSET


class ListModel(msgspec.Struct, kw_only=True):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    capabilities: list[str] = msgspec.field(default_factory=list)


class ListResponse(msgspec.Struct):
    models: list[ListModel]


class LayerPlacement(msgspec.Struct, kw_only=True):
    """Consecutive layers of a loaded model on one device, as llama.cpp placed them (not in Ollama)."""

    device: str  # llama.cpp's device name: CPU, CUDA0, RPC0 (an RPC worker's device)
    endpoint: str = ""  # the RPC worker's host:port; empty for this machine's own devices
    layers: int
    first_layer: int
    last_layer: int  # the highest index is the output layer


class ProcessModel(msgspec.Struct, kw_only=True):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int
    # ollama-py's addition: where the layers live, across RPC workers too; empty when not known.
    placement: list[LayerPlacement] = []


class ProcessResponse(msgspec.Struct):
    models: list[ProcessModel]


class ModelRequest(msgspec.Struct, kw_only=True):
    """The body of /api/delete and /api/show: a model, by `model` or the deprecated `name`."""

    model: str = ""
    name: str = ""  # Deprecated: use model.

    @property
    def target(self) -> str:
        return self.model or self.name


class ShowRequest(ModelRequest, kw_only=True):
    verbose: bool = False


class ShowResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    license: str = ""
    modelfile: str = ""
    parameters: str = ""
    template: str = ""
    system: str = ""
    details: ModelDetails = msgspec.field(default_factory=ModelDetails)
    messages: list[ResponseMessage] | None = None
    model_info: dict[str, Any] | None = None
    capabilities: list[str] | None = None
    modified_at: str = ""


class CopyRequest(msgspec.Struct, kw_only=True):
    source: str
    destination: str


class TransferRequest(ModelRequest, kw_only=True):
    """The body of /api/pull and /api/push."""

    insecure: bool = False  # allow plain http to the registry
    stream: bool = True
    username: str = ""  # Deprecated: ignored, as in Ollama.
    password: str = ""  # Deprecated: ignored, as in Ollama.


class CreateRequest(ModelRequest, kw_only=True, rename={"from_": "from"}):
    from_: str = ""  # a model in the store to build on
    files: dict[str, str] | None = None  # file name -> digest of a blob uploaded with POST /api/blobs
    adapters: dict[str, str] | None = None
    draft_files: dict[str, str] | None = None  # the Modelfile's DRAFT: one uploaded GGUF, {file name: digest}
    draft: str = ""  # ollama-py's own: a DRAFT that names a model in the store instead of a file
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    quantize: str = ""
    quantization: str = ""  # Deprecated: use quantize.
    stream: bool = True


# ---- ollama-py's own routes ---------------------------------------------------------


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: str
    text: str
    add_special: bool = False  # add the model's BOS (and EOS) tokens, as a prompt gets them
    keep_alive: Duration | None = None
    options: Options | None = None


class TokenizeResponse(msgspec.Struct, kw_only=True):
    model: str
    tokens: list[int]


class DetokenizeRequest(msgspec.Struct, kw_only=True):
    model: str
    tokens: list[int]
    keep_alive: Duration | None = None
    options: Options | None = None


class DetokenizeResponse(msgspec.Struct, kw_only=True):
    model: str
    text: str


class HealthResponse(msgspec.Struct, kw_only=True):
    status: str  # "ok"
    version: str  # ollama-py's own version
    loaded_models: int
