"""OpenAI's Responses API (`/v1/responses`), in OpenAI's own field names.

Fields SDKs send that change nothing here (`user`, `include`, `truncation`,
`service_tier`, ...) are ignored, as Ollama ignores them. Input items may
leave out `type` for a message (`{"role": "user", "content": "hi"}`), as
OpenAI allows, so an item is one Struct whose `type` says which fields apply.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# ---- content parts ------------------------------------------------------------------


class InputText(msgspec.Struct, tag="input_text", tag_field="type"):
    text: str


class OutputText(msgspec.Struct, tag="output_text", tag_field="type", kw_only=True):
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class InputImage(msgspec.Struct, tag="input_image", tag_field="type", kw_only=True):
    image_url: str | None = None  # a data: URL; remote URLs and file ids are refused
    file_id: str | None = None
    detail: str = "auto"


class Refusal(msgspec.Struct, tag="refusal", tag_field="type"):
    refusal: str


class ReasoningText(msgspec.Struct, tag="reasoning_text", tag_field="type"):
    text: str


class SummaryText(msgspec.Struct, tag="summary_text", tag_field="type"):
    text: str


InputContent = InputText | OutputText | InputImage | Refusal

# ---- requests -----------------------------------------------------------------------

ItemType = Literal["message", "function_call", "function_call_output", "reasoning"]


class InputItem(msgspec.Struct, kw_only=True):
    """One item of `input`: a message, an earlier function call or its output, or earlier reasoning."""

    type: ItemType = "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None  # message
    content: str | list[InputContent | ReasoningText] | None = None  # message; reasoning (its text)
    call_id: str = ""  # function_call, function_call_output
    name: str = ""  # function_call
    arguments: str = ""  # function_call: a JSON object, as text
    output: str | list[InputContent] = ""  # function_call_output
    summary: list[SummaryText] = msgspec.field(default_factory=list)  # reasoning
    encrypted_content: str | None = None  # reasoning: ours is the reasoning as plain text

    def __post_init__(self) -> None:
        if self.type == "message" and (self.role is None or self.content is None):
            raise ValueError("a message item needs a role and content")
        if self.type in ("function_call", "function_call_output") and not self.call_id:
            raise ValueError(f"a {self.type} item needs a call_id")
        if self.type == "function_call" and not self.name:
            raise ValueError("a function_call item needs a name")


class Tool(msgspec.Struct, kw_only=True):
    type: str  # only "function" is served; OpenAI's built-in tools are refused by name
    name: str = ""
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoice(msgspec.Struct, kw_only=True):
    type: str  # "function"
    name: str = ""


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str = ""
    schema: dict[str, Any] | None = None
    description: str = ""
    strict: bool | None = None

    def __post_init__(self) -> None:
        if self.type == "json_schema" and self.schema is None:
            raise ValueError("text.format of type json_schema needs a schema")


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=lambda: TextFormat(type="text"))


class Reasoning(msgspec.Struct, kw_only=True):
    effort: str | None = None  # one of api.options.REASONING_EFFORTS ("ultra" too, as Ollama)
    summary: str | None = None  # accepted; the whole reasoning is always given back


class ResponseRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[InputItem] = ""
    instructions: str | None = None  # a system message first; not carried over by previous_response_id
    previous_response_id: str | None = None  # continue from a stored response without resending it
    store: bool = True  # kept for previous_response_id and GET /v1/responses/{id}
    stream: bool = False
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None  # omitted: 1.0, OpenAI's default
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None  # omitted: the model's own (as Ollama)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    metadata: dict[str, str] | None = None
    keep_alive: str | int | float | None = None  # Ollama's, for clients that pass it as an extra


# ---- the response -------------------------------------------------------------------


class OutputMessage(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    id: str
    status: str  # in_progress | completed | incomplete
    role: str = "assistant"
    content: list[OutputText]


class FunctionCall(msgspec.Struct, tag="function_call", tag_field="type", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


class ReasoningItem(msgspec.Struct, tag="reasoning", tag_field="type", kw_only=True):
    id: str
    summary: list[SummaryText]
    encrypted_content: str | None = None  # the reasoning as plain text, to be sent back as Ollama does


OutputItem = OutputMessage | FunctionCall | ReasoningItem


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: str  # max_output_tokens


class Response(msgspec.Struct, kw_only=True):
    id: str  # resp_...
    object: str = "response"
    created_at: int
    completed_at: int | None = None
    status: str  # in_progress | completed | incomplete
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: Reasoning = msgspec.field(default_factory=Reasoning)
    store: bool
    temperature: float
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    tool_choice: ToolChoice = "auto"
    tools: list[Tool] = msgspec.field(default_factory=list)
    top_p: float
    truncation: str = "disabled"
    usage: Usage | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    background: bool = False
    service_tier: str = "default"


class Deleted(msgspec.Struct, kw_only=True):
    id: str
    object: str = "response"
    deleted: bool = True


# ---- stream events (the tag is also the SSE event name) -----------------------------


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    sequence_number: int


class _Lifecycle(_Event, kw_only=True):
    response: Response


class _OutputEvent(_Event, kw_only=True):
    output_index: int


class _ItemEvent(_OutputEvent, kw_only=True):
    item_id: str


class _ContentEvent(_ItemEvent, kw_only=True):
    content_index: int


class _SummaryEvent(_ItemEvent, kw_only=True):
    summary_index: int


class ResponseCreated(_Lifecycle, tag="response.created", kw_only=True):
    pass


class ResponseInProgress(_Lifecycle, tag="response.in_progress", kw_only=True):
    pass


class ResponseCompleted(_Lifecycle, tag="response.completed", kw_only=True):
    pass


class ResponseIncomplete(_Lifecycle, tag="response.incomplete", kw_only=True):
    pass


class OutputItemAdded(_OutputEvent, tag="response.output_item.added", kw_only=True):
    item: OutputItem


class OutputItemDone(_OutputEvent, tag="response.output_item.done", kw_only=True):
    item: OutputItem


class ContentPartAdded(_ContentEvent, tag="response.content_part.added", kw_only=True):
    part: OutputText


class ContentPartDone(_ContentEvent, tag="response.content_part.done", kw_only=True):
    part: OutputText


class OutputTextDelta(_ContentEvent, tag="response.output_text.delta", kw_only=True):
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputTextDone(_ContentEvent, tag="response.output_text.done", kw_only=True):
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class FunctionCallArgumentsDelta(_ItemEvent, tag="response.function_call_arguments.delta", kw_only=True):
    delta: str


class FunctionCallArgumentsDone(_ItemEvent, tag="response.function_call_arguments.done", kw_only=True):
    name: str
    arguments: str


class ReasoningSummaryPartAdded(_SummaryEvent, tag="response.reasoning_summary_part.added", kw_only=True):
    part: SummaryText


class ReasoningSummaryTextDelta(_SummaryEvent, tag="response.reasoning_summary_text.delta", kw_only=True):
    delta: str


class ReasoningSummaryTextDone(_SummaryEvent, tag="response.reasoning_summary_text.done", kw_only=True):
    text: str


class ReasoningSummaryPartDone(_SummaryEvent, tag="response.reasoning_summary_part.done", kw_only=True):
    part: SummaryText


class StreamError(_Event, tag="error", kw_only=True):
    """A failure after the stream began (the status was already sent)."""

    code: str
    message: str
    param: str | None = None


StreamEvent = (ResponseCreated | ResponseInProgress | ResponseCompleted | ResponseIncomplete | OutputItemAdded
               | OutputItemDone | ContentPartAdded | ContentPartDone | OutputTextDelta | OutputTextDone
               | FunctionCallArgumentsDelta | FunctionCallArgumentsDone | ReasoningSummaryPartAdded
               | ReasoningSummaryTextDelta | ReasoningSummaryTextDone | ReasoningSummaryPartDone | StreamError)
