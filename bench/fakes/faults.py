"""Injectable faults for the fake providers.

A fault is a frozen value; build one with the constructors on :class:`Fault` and hand it to
``FakeProvider.inject`` or ``FakeProvider.set_default``::

    Fault.status(529)                                   # provider-style error body
    Fault.status(429, headers={"retry-after": "1"})
    Fault.status(400, code="context_length_exceeded")   # realistic per-provider body
    Fault.hang(10)                                      # accept, send nothing
    Fault.hang_after_headers(10)                        # 200 headers, then nothing
    Fault.reset_mid_stream(after_chunks=2)              # abort the connection mid-body
    Fault.end_without_done(2, with_finish_reason=True)  # clean close, no [DONE]/message_stop
    Fault.error_mid_stream(2, 529)                      # in-band SSE error event, clean close
    Fault.malformed()                                   # invalid JSON / SSE data
    Fault.status(400, echo_headers=True)                # error message echoes the request
    Fault.error_mid_stream(2, 500, echo_headers=True)   #   headers (a leaky proxy: keys!)
    Fault.slow_chunks(0.2)                              # delay before every content chunk
    Fault.stall_mid_stream(2, 5.0)                      # pause once, then continue

"Chunks" always count *content* events (text or tool-argument deltas); the preamble of a
stream (OpenAI's role chunk, Anthropic's message_start/content_block_start/ping) travels
with the first content chunk and is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "EndWithoutDoneFault",
    "ErrorMidStreamFault",
    "Fault",
    "FaultAbort",
    "HangAfterHeadersFault",
    "HangFault",
    "MalformedFault",
    "ResetMidStreamFault",
    "SlowChunksFault",
    "StallMidStreamFault",
    "StatusFault",
]


class FaultAbort(Exception):
    """Raised inside the ASGI app to make uvicorn drop the connection (injected fault).

    uvicorn closes the socket when an app raises after the response started; before it
    started, uvicorn answers a bare 500. Log records carrying this exception are filtered
    out by :func:`bench.fakes.server.quiet_fault_logs`.
    """


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Fault:
    """Base of all faults. Use the static constructors; match on the subclasses."""

    @staticmethod
    def status(
        http_status: int,
        /,
        body: bytes | str | Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        code: str | None = None,
        message: str | None = None,
        echo_headers: bool = False,
    ) -> StatusFault:
        """Answer ``http_status`` with ``body`` (default: the provider's own error format).

        ``code`` picks a realistic body: ``"context_length_exceeded"``,
        ``"content_policy_violation"``, ``"rate_limit_exceeded"``, ``"insufficient_quota"``
        (OpenAI ``error.code``); for Anthropic any other value is used as ``error.type``
        and for Gemini as ``error.status``. ``message`` overrides the message text;
        ``echo_headers`` appends the request's headers and query to it, as a careless
        upstream or proxy does (provider key included).
        """
        if not 100 <= http_status <= 599:
            raise ValueError(f"HTTP status out of range: {http_status}")
        raw: bytes | None
        if body is None:
            raw = None
        elif isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
        else:
            raw = msgspec.json.encode(dict(body))
        hdrs = tuple((k.lower(), v) for k, v in (headers or {}).items())
        return StatusFault(http_status, raw, hdrs, code, message, echo_headers)

    @staticmethod
    def hang(seconds: float) -> HangFault:
        """Read the request, send nothing (not even headers) for ``seconds``, then give up.

        Giving up means uvicorn answers a bare 500 and closes, unless the client left first.
        """
        _non_negative("seconds", seconds)
        return HangFault(seconds)

    @staticmethod
    def hang_after_headers(seconds: float) -> HangAfterHeadersFault:
        """Send 200 headers, then nothing for ``seconds``, then the normal body."""
        _non_negative("seconds", seconds)
        return HangAfterHeadersFault(seconds)

    @staticmethod
    def reset_mid_stream(after_chunks: int) -> ResetMidStreamFault:
        """Send ``after_chunks`` content chunks, then drop the connection (incomplete body).

        For a non-streaming request: headers with the full Content-Length, half the body,
        then the drop.
        """
        _non_negative("after_chunks", after_chunks)
        return ResetMidStreamFault(after_chunks)

    @staticmethod
    def end_without_done(after_chunks: int, *, with_finish_reason: bool = False) -> EndWithoutDoneFault:
        """Send ``after_chunks`` chunks, then end the body cleanly without the terminator.

        Terminator: ``data: [DONE]`` (OpenAI), ``message_stop`` (Anthropic); Gemini has none,
        so there the only signal left is the missing ``finishReason``. With
        ``with_finish_reason`` the finish event (finish_reason "stop" / content_block_stop +
        message_delta / finishReason STOP) is sent before closing.
        """
        _non_negative("after_chunks", after_chunks)
        return EndWithoutDoneFault(after_chunks, with_finish_reason)

    @staticmethod
    def error_mid_stream(
        after_chunks: int, http_status: int = 529, *, code: str | None = None,
        echo_headers: bool = False,
    ) -> ErrorMidStreamFault:
        """Send ``after_chunks`` chunks, then an in-band error event, then close cleanly.

        The event carries the same error body ``Fault.status(http_status, code=code)`` would
        (Anthropic: ``event: error``; OpenAI and Gemini: ``data: {"error": ...}``);
        ``echo_headers`` as for :meth:`status`.
        """
        _non_negative("after_chunks", after_chunks)
        return ErrorMidStreamFault(after_chunks, http_status, code, echo_headers)

    @staticmethod
    def malformed() -> MalformedFault:
        """200 with a body that is not JSON; for streams ``data: {not json`` comes first,
        followed by the normal stream."""
        return MalformedFault()

    @staticmethod
    def slow_chunks(delay_s: float) -> SlowChunksFault:
        """Stream normally but sleep ``delay_s`` before every content chunk (the first too).

        For a non-streaming request: one sleep of ``delay_s`` before the response.
        """
        _non_negative("delay_s", delay_s)
        return SlowChunksFault(delay_s)

    @staticmethod
    def stall_mid_stream(after_chunks: int, seconds: float) -> StallMidStreamFault:
        """Send ``after_chunks`` chunks, pause ``seconds``, then continue normally.

        For a non-streaming request: one pause of ``seconds`` before the response.
        """
        _non_negative("after_chunks", after_chunks)
        _non_negative("seconds", seconds)
        return StallMidStreamFault(after_chunks, seconds)

    @staticmethod
    def parse(spec: str) -> Fault:
        """Parse a command-line spec: ``name[:arg[:arg]]``, e.g. ``status:503``,
        ``hang:5``, ``slow_chunks:0.05``, ``reset_mid_stream:2``, ``stall_mid_stream:2:1.5``,
        ``end_without_done:2``, ``error_mid_stream:2:529``, ``malformed``."""
        name, *args = spec.split(":")
        try:
            if name == "status":
                return Fault.status(int(args[0]))
            if name == "hang":
                return Fault.hang(float(args[0]))
            if name == "hang_after_headers":
                return Fault.hang_after_headers(float(args[0]))
            if name == "reset_mid_stream":
                return Fault.reset_mid_stream(int(args[0]))
            if name == "end_without_done":
                return Fault.end_without_done(int(args[0]))
            if name == "error_mid_stream":
                return Fault.error_mid_stream(int(args[0]), *(int(a) for a in args[1:2]))
            if name == "malformed":
                return Fault.malformed()
            if name == "slow_chunks":
                return Fault.slow_chunks(float(args[0]))
            if name == "stall_mid_stream":
                return Fault.stall_mid_stream(int(args[0]), float(args[1]))
        except (IndexError, ValueError) as exc:
            raise ValueError(f"bad fault spec {spec!r}: {exc}") from exc
        raise ValueError(f"unknown fault {name!r} in spec {spec!r}")


@dataclass(frozen=True, slots=True)
class StatusFault(Fault):
    http_status: int
    body: bytes | None
    headers: tuple[tuple[str, str], ...]
    code: str | None
    message: str | None
    echo_headers: bool = False


@dataclass(frozen=True, slots=True)
class HangFault(Fault):
    seconds: float


@dataclass(frozen=True, slots=True)
class HangAfterHeadersFault(Fault):
    seconds: float


@dataclass(frozen=True, slots=True)
class ResetMidStreamFault(Fault):
    after_chunks: int


@dataclass(frozen=True, slots=True)
class EndWithoutDoneFault(Fault):
    after_chunks: int
    with_finish_reason: bool


@dataclass(frozen=True, slots=True)
class ErrorMidStreamFault(Fault):
    after_chunks: int
    http_status: int
    code: str | None
    echo_headers: bool = False
    message: str | None = None  # set from the request when echo_headers


@dataclass(frozen=True, slots=True)
class MalformedFault(Fault):
    pass


@dataclass(frozen=True, slots=True)
class SlowChunksFault(Fault):
    delay_s: float


@dataclass(frozen=True, slots=True)
class StallMidStreamFault(Fault):
    after_chunks: int
    seconds: float
