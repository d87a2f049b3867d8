"""One exception tree, rendered as OpenAI-style error bodies.

    GatewayError                      any error answered to the client
    ├── InvalidRequest       400      bad JSON or schema (names the field)
    ├── Unauthorized         401      admin / client key problems
    ├── ModelNotFound        404      ``model`` names nothing in the pool
    ├── PayloadTooLarge      413      body over server.max_body_bytes
    ├── UpstreamRejected     4xx      the provider refused the request itself (content policy,
    │                                 invalid parameter): returned with its reason, not retried
    └── AllAttemptsFailed    502/503/504  every attempt of the plan failed (lists them)

Messages never carry secrets: upstream bodies are only echoed for client-caused 4xx errors,
and those never contain our keys.
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
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


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
