"""The one place exceptions become HTTP statuses (Ollama's handleScheduleError and friends).

Handlers raise what they raise; `classify` maps it to a status and a message,
and `render` writes it in the shape the route's clients expect: Ollama's
`{"error": "..."}` under /api, Anthropic's `{"type": "error", "error": {...}}`
under /v1/messages, OpenAI's `{"error": {"message", "type", ...}}` elsewhere
under /v1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web

from ollama_py.api import anthropic, codec, openai
from ollama_py.engine.scheduler import Busy
from ollama_py.engine.types import EngineError
from ollama_py.store.blobs import BlobNotFoundError, OutsideStoreError, disk_full
from ollama_py.store.default_model import DefaultModelError
from ollama_py.store.manifests import ModelNotFoundError
from ollama_py.store.names import InvalidNameError

log = logging.getLogger(__name__)

# nginx's code for "client closed the request"; Ollama logs it for requests cancelled while waiting.
CLIENT_CLOSED = 499

_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {**_OPENAI_TYPES, 413: "request_too_large", 503: "overloaded_error"}


class ApiError(Exception):
    """An answer that is an error: status and message as the client will see them."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def classify(exc: BaseException) -> ApiError:
    """The status and message for an exception raised while serving a request."""
    match exc:
        case ApiError():
            return exc
        case web.HTTPException():
            return ApiError(exc.status, exc.text or exc.reason)
        case ModelNotFoundError() | BlobNotFoundError():
            return ApiError(404 if isinstance(exc, ModelNotFoundError) else 400, str(exc))
        case Busy():
            return ApiError(503, str(exc))
        case OSError() if disk_full(exc):
            return ApiError(507, f"not enough disk space in the model store: {exc.strerror}")
        case OutsideStoreError():
            return ApiError(403, str(exc))
        case codec.BadRequest() | InvalidNameError() | ValueError():
            return ApiError(400, str(exc))
        case EngineError() | DefaultModelError():
            return ApiError(500, str(exc))
        case _ if hasattr(exc, "status") and isinstance(exc.status, int):
            return ApiError(exc.status, str(exc))  # errors that carry their status (the registry's)
        case _:
            log.error("unexpected error", exc_info=exc)
            return ApiError(500, f"internal error: {exc}")


def is_openai(request: web.Request) -> bool:
    return request.path.startswith("/v1/")


def is_anthropic(request: web.Request) -> bool:
    return request.path == "/v1/messages" or request.path.startswith("/v1/messages/")


def render(request: web.Request, error: ApiError) -> web.Response:
    """The error as a response in the shape of the route's API."""
    if is_anthropic(request):
        # Anthropic's SDK retries 503 (and 529) itself: a busy server keeps its status.
        return web.Response(status=error.status, body=codec.encode(anthropic_error_body(error)),
                            content_type="application/json", headers=error.headers)
    if not is_openai(request):
        return web.Response(status=error.status, body=codec.encode({"error": error.message}),
                            content_type="application/json", headers=error.headers)
    status = _openai_status(error)
    headers = {**error.headers, "Retry-After": "1"} if status == 429 else error.headers
    return web.Response(status=status, body=codec.encode(openai_error_body(error)), content_type="application/json",
                        headers=headers)


def _openai_status(error: ApiError) -> int:
    # SDK clients retry 429 with backoff; a busy server is exactly that case.
    return 429 if error.status == 503 else error.status


def openai_error_body(error: ApiError) -> openai.ErrorResponse:
    """The OpenAI error object, also sent as the last event of a stream that failed."""
    return openai.ErrorResponse(openai.ErrorDetail(message=error.message,
                                                   type=_OPENAI_TYPES.get(_openai_status(error), "api_error")))


def anthropic_error_body(error: ApiError) -> anthropic.ErrorResponse:
    """Anthropic's error object, also sent as the `error` event of a stream that failed."""
    return anthropic.ErrorResponse(anthropic.ErrorDetail(type=_ANTHROPIC_TYPES.get(error.status, "api_error"),
                                                         message=error.message))
