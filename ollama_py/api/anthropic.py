"""Anthropic's Messages API (`/v1/messages`), in Anthropic's own field names.

What a local model cannot honour is accepted and ignored as Ollama does
(`metadata`, `cache_control` on blocks, `disable_parallel_tool_use`); content
blocks of kinds we cannot read (documents, server tool results) are refused
with the block named, rather than dropped without a word.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# ---- content blocks (requests and answers) ------------------------------------------


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageSource(msgspec.Struct, kw_only=True):
    type: Literal["base64", "url"]  # url is refused: the server fetches nothing a request points at
    media_type: str = ""
    data: str = ""
    url: str = ""


class ImageBlock(msgspec.Struct, tag="image", tag_field="type"):
    source: ImageSource


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type", kw_only=True):
    id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type", kw_only=True):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock] = ""
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type", kw_only=True):
    thinking: str
    signature: str = ""  # Anthropic signs its reasoning; ours is plain text and unsigned


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    data: str  # encrypted by Anthropic: nothing a local model can read, so it is skipped


ContentBlock = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
AnswerBlock = ThinkingBlock | TextBlock | ToolUseBlock

# ---- requests -----------------------------------------------------------------------


class Message(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(msgspec.Struct, kw_only=True):
    name: str
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})
    type: str = "custom"  # Anthropic's server tools (web_search_..., bash_...) name another type


class ToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  # for type "tool"
    disable_parallel_tool_use: bool = False

    def __post_init__(self) -> None:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type tool needs the tool's name")


class ThinkingConfig(msgspec.Struct, kw_only=True):
    type: str  # "enabled" or "disabled"; any other ("adaptive", ...) leaves it to the model, as omitting it does
    budget_tokens: int | None = None  # a local model thinks until it is done: accepted, not enforced


class JSONOutputFormat(msgspec.Struct, kw_only=True):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, kw_only=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None  # turns thinking on unless `thinking` says
    format: JSONOutputFormat | None = None  # the answer is constrained to the schema


class CountTokensRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    max_tokens: Annotated[int, Meta(ge=1)]
    stream: bool = False
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None  # Anthropic's range; omitted: the model's own
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    stop_sequences: list[str] | None = None
    keep_alive: str | int | float | None = None  # Ollama's, for clients that pass it as an extra


# ---- answers ------------------------------------------------------------------------


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageResponse(msgspec.Struct, kw_only=True):
    id: str  # msg_...
    type: str = "message"
    role: str = "assistant"
    content: list[AnswerBlock]
    model: str
    stop_reason: StopReason | None = None  # null in message_start, as Anthropic streams it
    stop_sequence: str | None = None
    usage: Usage


class CountTokensResponse(msgspec.Struct, kw_only=True):
    input_tokens: int


# ---- stream events (the tag is also the SSE event name) -----------------------------


class MessageStart(msgspec.Struct, tag="message_start", tag_field="type"):
    message: MessageResponse


class ContentBlockStart(msgspec.Struct, tag="content_block_start", tag_field="type", kw_only=True):
    index: int
    content_block: AnswerBlock


class Ping(msgspec.Struct, tag="ping", tag_field="type"):
    pass


class TextDelta(msgspec.Struct, tag="text_delta", tag_field="type"):
    text: str


class ThinkingDelta(msgspec.Struct, tag="thinking_delta", tag_field="type"):
    thinking: str


class InputJSONDelta(msgspec.Struct, tag="input_json_delta", tag_field="type"):
    partial_json: str


class ContentBlockDelta(msgspec.Struct, tag="content_block_delta", tag_field="type", kw_only=True):
    index: int
    delta: TextDelta | ThinkingDelta | InputJSONDelta


class ContentBlockStop(msgspec.Struct, tag="content_block_stop", tag_field="type"):
    index: int


class Stop(msgspec.Struct, kw_only=True):
    stop_reason: StopReason
    stop_sequence: str | None = None


class MessageDelta(msgspec.Struct, tag="message_delta", tag_field="type", kw_only=True):
    delta: Stop
    usage: Usage  # totals for the whole message: input tokens are known only once the prompt is read


class MessageStop(msgspec.Struct, tag="message_stop", tag_field="type"):
    pass


# ---- errors -------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct, kw_only=True):
    # invalid_request_error | authentication_error | permission_error | not_found_error | request_too_large
    # | rate_limit_error | overloaded_error | api_error
    type: str
    message: str


class ErrorResponse(msgspec.Struct, tag="error", tag_field="type"):
    """The body of a failed request, and the `error` event of a stream that failed."""

    error: ErrorDetail


StreamEvent = (MessageStart | ContentBlockStart | Ping | ContentBlockDelta | ContentBlockStop | MessageDelta
               | MessageStop | ErrorResponse)
