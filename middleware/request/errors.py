"""One exception tree, rendered as OpenAI-style error bodies.

    GatewayError                      any error answered to the client
    ├── InvalidRequest       400      bad JSON or schema (names the field)
    ├── Unauthorized         401      admin / client key problems
    ├── ModelNotFound        404      ``model`` names nothing in the pool
    ├── PayloadTooLarge      413      body over server.max_body_bytes
    ├── UpstreamRejected     4xx      the provider refused the request itself (content policy,
    │                                 invalid parameter): returned with its reason, not retried
    └── AllAttemptsFailed    502/503/504  every attempt of the plan failed (lists them)

A plain ``GatewayError`` with a 4xx ``status`` (404 no route, 405 wrong method, ...) gets the
type OpenAI uses for that status, not ``server_error``. Upstream text (bodies, codes, details)
reaches these messages only through the relay's :class:`~routegate.middleware.request.scrub.Scrubber`.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "AllAttemptsFailed",
    "ErrorBody",
    "ErrorDetail",
    "GatewayError",
    "InvalidRequest",
    "ModelNotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "UpstreamRejected",
    "error_body",
    "invalid_json",
]


class ErrorDetail(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_encoder = msgspec.json.Encoder()


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    return _encoder.encode(ErrorBody(ErrorDetail(message=message, type=type_, param=param, code=code)))


# OpenAI's error types by status; every other 4xx is an ``invalid_request_error``.
_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error",
                   429: "rate_limit_error"}


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if self.status < 500 and self.type == "server_error":
            self.type = _TYPE_BY_STATUS.get(self.status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


def invalid_json(exc: Exception) -> InvalidRequest:
    """400 for a client body that does not decode (syntax, invalid UTF-8, or nested deeper
    than the decoder recurses: msgspec raises RecursionError for that, not DecodeError)."""
    reason = ("nested too deeply" if isinstance(exc, RecursionError) else str(exc))
    return InvalidRequest(f"The request body is not valid JSON: {reason}", code="invalid_json")


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UpstreamRejected(GatewayError):
    """A 4xx that is the request's fault; ``raw_body`` is the provider's own error body."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int, code: str | None, raw_body: bytes | None) -> None:
        super().__init__(message, status=status, code=code)
        self.raw_body = raw_body

    def body(self) -> bytes:
        return self.raw_body if self.raw_body is not None else super().body()


class AllAttemptsFailed(GatewayError):
    status = 502
    type = "upstream_error"
    code = "all_attempts_failed"
