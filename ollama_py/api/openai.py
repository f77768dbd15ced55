"""OpenAI's API (`/v1/*`) as far as a local server can honour it, in OpenAI's own field names.

Requests carry many fields SDKs send that change nothing here (`user`,
`parallel_tool_calls`, ...); unknown fields are ignored rather than refused,
because SDKs add new ones all the time. Values are taken as Ollama takes them:
sampling numbers pass on unbounded (llama.cpp's sampler copes with any), `n`
is ignored, an enum value Ollama ignores is ignored here (the handler logs it
once), and what Ollama refuses (an unknown `reasoning_effort`) is refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# ---- errors -------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str  # invalid_request_error | not_found_error | authentication_error | rate_limit_error | api_error
    param: str | None = None
    code: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorDetail


# ---- chat request -------------------------------------------------------------------


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageURL(msgspec.Struct, kw_only=True):
    url: str  # a data: URI with base64 content; remote URLs are refused
    detail: str = "auto"


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: ImageURL | str


class InputAudio(msgspec.Struct, kw_only=True):
    data: str  # base64
    format: str = "wav"


class AudioPart(msgspec.Struct, tag="input_audio", tag_field="type"):
    input_audio: InputAudio


ContentPart = TextPart | ImagePart | AudioPart


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: str = ""  # a JSON object, as text


class ToolCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str = ""
    type: Literal["function"]  # no default, so always sent
    function: FunctionCall
    index: int | None = None  # in stream deltas


class ChatMessage(msgspec.Struct, kw_only=True):
    # system, developer (a system message), user, assistant, tool, or the legacy function (a tool result
    # named by `name`); any other role is passed to the template as it is, as Ollama passes it.
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # Deprecated by OpenAI: the one call of a legacy assistant turn.
    tool_call_id: str | None = None
    reasoning: str | None = None  # what Ollama's API calls the thinking of an earlier answer
    reasoning_content: str | None = None  # the same, as llama-server and DeepSeek name it


class FunctionDefinition(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    strict: bool | None = None


class ToolDefinition(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDefinition


ToolChoice = str | dict[str, Any]
""""none", "auto", "required", or {"type": "function", "function": {"name": ...}}; other values (Anthropic's
"any", newer object shapes) are ignored, as Ollama ignores tool_choice altogether."""


class JSONSchemaFormat(msgspec.Struct, kw_only=True):
    name: str = ""
    schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None
    description: str = ""


class ResponseFormat(msgspec.Struct, kw_only=True):
    type: str  # text, json_object or json_schema; others, and json_schema without one, are free text (as Ollama)
    json_schema: JSONSchemaFormat | None = None


class Reasoning(msgspec.Struct, kw_only=True):
    effort: str | None = None  # as reasoning_effort; wins over it when both are given, as in Ollama



class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


Stop = str | list[str]
MaxTokens = int  # negative: no limit (Ollama's num_predict); always bounded by the server's own limit


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None  # Deprecated by OpenAI: use max_completion_tokens.
    max_completion_tokens: MaxTokens | None = None
    temperature: float | None = None  # omitted: 1.0, as OpenAI (and Ollama's /v1)
    top_p: float | None = None  # omitted: 1.0
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: Stop | None = None
    n: int | None = None  # ignored, as Ollama ignores it: one choice
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    reasoning_effort: str | None = None  # one of api.options.REASONING_EFFORTS
    reasoning: Reasoning | None = None
    keep_alive: str | int | float | None = None  # Ollama's, for clients that pass it as an extra


# ---- chat response ------------------------------------------------------------------


class TopLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct, kw_only=True):
    content: list[TokenLogprob] | None


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0  # prompt tokens served from the prompt cache


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class AssistantMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: str  # no default, so always sent
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = "fp_ollama"
    choices: list[ChatChoice]
    usage: Usage


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str = "fp_ollama"
    choices: list[ChunkChoice]
    usage: Usage | None = None


# ---- completions --------------------------------------------------------------------


class CompletionRequest(msgspec.Struct, kw_only=True):
    model: str
    prompt: str | list[str] = ""  # a list must hold exactly one prompt
    suffix: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None  # omitted: no limit but the server's, as Ollama (OpenAI stops at 16)
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: Stop | None = None
    n: int | None = None  # ignored, as Ollama ignores it
    echo: bool = False
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None  # how many alternatives per token, as top_logprobs
    keep_alive: str | int | float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: exactly one prompt is supported")


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    system_fingerprint: str = "fp_ollama"
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- embeddings ---------------------------------------------------------------------


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class Embedding(msgspec.Struct, kw_only=True):
    object: str = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# ---- models -------------------------------------------------------------------------


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[Model]
