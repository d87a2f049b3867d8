"""Secrets out of upstream text before it reaches a client, a log, a span or the admin API.

A provider (or a proxy in front of one) may echo the request's headers in its error body,
and with them our provider key. :class:`Scrubber` replaces, in one pass of one compiled
regex, every configured secret value (provider keys as read from their env vars, the admin
token; also in their JSON-escaped form) and the value after an auth header name
(``Authorization: Bearer ...``, ``x-api-key``, ``x-goog-api-key``, ``api-key``) or after a
bare ``Bearer``. Everything else of the provider's error (its type, its message) stays.

It is built once per config (:meth:`Gateway.install`) and applied only on error paths: an
attempt's failure, and stream events that carry an ``"error"``; never to content chunks.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import msgspec

from routegate.middleware.contracts import UpstreamFailure

__all__ = ["REDACTED", "Scrubber"]

REDACTED = "[REDACTED]"
_MIN_SECRET = 4  # shorter values would redact ordinary words; such keys are not keys anyway

# name, separator (quotes, colon or equals, maybe JSON-escaped), optional scheme, value
_HEADER = (r"\b((?i:(?:proxy-)?authorization|x-goog-api-key|x-api-key|api[-_]?key))"
           r"""(\\?["']?\s*[:=]\s*\\?["']?)((?i:bearer|basic|token)\s+)?[^\s"'\\,;&}\]]+""")
_BEARER = r"\b((?i:bearer)\s+)[A-Za-z0-9._~+/=-]{6,}"


class Scrubber:
    """``text(s)``/``bytes(b)``: the input with every secret and auth-header value redacted."""

    __slots__ = ("_bytes", "_text")

    def __init__(self, secrets: Iterable[str]) -> None:
        values: set[str] = set()
        for secret in secrets:
            if len(secret) >= _MIN_SECRET:
                values.add(secret)
                values.add(msgspec.json.encode(secret).decode()[1:-1])  # as inside a JSON string
        # longest first: a key that contains another is replaced whole
        literal = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
        source = "|".join(f"(?:{p})" for p in (literal, _HEADER, _BEARER) if p)
        self._text = re.compile(source)
        self._bytes = re.compile(source.encode())

    def text(self, text: str) -> str:
        return self._text.sub(_keep_name, text)

    def bytes(self, data: bytes) -> bytes:
        return self._bytes.sub(_keep_name_bytes, data)

    def failure(self, failure: UpstreamFailure) -> UpstreamFailure:
        """The failure with its detail, code and client body scrubbed (all upstream text)."""
        return dataclasses.replace(
            failure, detail=self.text(failure.detail),
            code=None if failure.code is None else self.text(failure.code),
            client_body=None if failure.client_body is None else self.bytes(failure.client_body))


def _keep_name(match: re.Match[str]) -> str:
    # groups 1-3: header name, separator, scheme; 4: "Bearer " before a bare token
    name, sep, scheme, bearer = match.groups()
    if name is not None:
        return f"{name}{sep}{scheme or ''}{REDACTED}"
    return f"{bearer or ''}{REDACTED}"


def _keep_name_bytes(match: re.Match[bytes]) -> bytes:
    name, sep, scheme, bearer = match.groups()
    if name is not None:
        return b"%s%s%s%s" % (name, sep, scheme or b"", REDACTED.encode())
    return b"%s%s" % (bearer or b"", REDACTED.encode())
