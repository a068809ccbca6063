"""Errors in llama.cpp's (and OpenAI's) shape: `{"error": {"code", "message", "type"}}`.

Routes raise `ApiError`; the app's handlers turn it, rllama's own exceptions and Quart's HTTP
exceptions into that shape, so no route builds an error body by hand.
"""

from __future__ import annotations

import json
from typing import Any

from rllama.errors import ContextFullError, GrammarError, InvalidRequestError, RllamaError

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
SERVER = "server_error"
PERMISSION = "permission_error"
UNAVAILABLE = "unavailable_error"
NOT_SUPPORTED = "not_supported_error"

_STATUS = {INVALID_REQUEST: 400, AUTHENTICATION: 401, PERMISSION: 403, NOT_FOUND: 404, SERVER: 500,
           NOT_SUPPORTED: 501, UNAVAILABLE: 503}


class ApiError(Exception):
    def __init__(self, message: str, type_: str = INVALID_REQUEST, code: int | None = None):
        super().__init__(message)
        self.message = message
        self.type = type_
        self.code = code if code is not None else _STATUS[type_]

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "type": self.type}}

    def json(self) -> str:
        return json.dumps(self.body(), ensure_ascii=False)


def invalid(message: str) -> ApiError:
    return ApiError(message, INVALID_REQUEST)


def not_supported(message: str) -> ApiError:
    return ApiError(message, NOT_SUPPORTED)


def not_found(message: str) -> ApiError:
    return ApiError(message, NOT_FOUND)


def unavailable(message: str) -> ApiError:
    return ApiError(message, UNAVAILABLE)


def from_exception(e: BaseException) -> ApiError:
    """The API error for an exception raised while serving a request.

    Everything a request's content can cause is a 400; only a fault of ours is a 500."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, GrammarError):
        return invalid(str(e) or "Failed to parse grammar")
    if isinstance(e, ContextFullError):
        return invalid(str(e) or "the request does not fit in the context")
    if isinstance(e, InvalidRequestError):
        return invalid(str(e))
    if isinstance(e, (OverflowError, RecursionError)):
        # A number or structure too large for the engine's types: the request's fault.
        return invalid(f"a value in the request is out of range ({e})")
    if isinstance(e, RllamaError):
        return ApiError(str(e), SERVER)
    return ApiError(f"internal error: {type(e).__name__}: {e}", SERVER)
