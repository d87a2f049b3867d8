"""uvicorn's httptools protocol, writing each response's head and first body part together.

uvicorn writes the status line and headers the moment ``http.response.start`` is sent and the
body separately: two ``send()`` syscalls and two TCP segments per answer, and the client
wakes up twice. A JSON answer's body always follows its start in the same event-loop step
(the relay has the whole answer before it starts), so holding the head until then costs
nothing: measured on the gateway bench, one syscall less per answer. A head with no body
right behind it (a stream still waiting for its first event) goes out at the end of that
loop step, so nothing is ever delayed past the step that produced it.

Used by ``routegate serve``; when routegate is mounted in a host app, the host's server writes.

:func:`protocol_class` adds the limits of ``[server]`` for slow and oversized clients (uvicorn
has none of them for httptools): a cap on the request head (431), a deadline for the head and
one for the body (408; an idle new connection is closed silently), the keep-alive idle timeout,
and a cap on open connections (503 and close, with one rate-limited log line). It relies on
uvicorn's ``HttpToolsProtocol`` internals (``connections``, ``cycle``, ``timeout_keep_alive``,
the parser callbacks): pyproject pins the uvicorn range and tests/middleware/
test_client_limits.py fails loudly when they change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from routegate.middleware.config import ServerConfig
from routegate.middleware.errors import error_body

__all__ = ["CoalescingHttpToolsProtocol", "GuardedHttpToolsProtocol", "protocol_class"]

log = logging.getLogger("routegate")

_RESPONSE_HEAD = b"HTTP/1.1 "


class _HeadHoldingTransport:
    """Delegates to the real transport; holds a response head until the next write."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(_RESPONSE_HEAD):
            self._head = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else: the real transport
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]


def _canned(status: int, reason: str, message: str, code: str) -> bytes:
    body = error_body(message, "invalid_request_error" if status < 500 else "server_error", code)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body))


_TIMEOUT = _canned(408, "Request Timeout", "The request was not received in time",
                   "request_timeout")
_BUSY = _canned(503, "Service Unavailable", "The server has too many open connections; retry "
                "later", "too_many_connections")
_LOG_EVERY_S = 10.0
_LINGER_S = 2.0  # after a 431/408: read and drop what the client still sends, then close

Phase = Literal["head", "body", "done"]  # reading a request head / its body / neither


class _Limits:
    """One server's limits, and its connection-cap log state (one line per 10 s at most)."""

    def __init__(self, server: ServerConfig) -> None:
        self.max_header_bytes = server.max_header_bytes
        self.header_timeout_s = server.header_timeout_s
        self.body_timeout_s = server.body_timeout_s
        self.keepalive_timeout_s = server.keepalive_timeout_s
        self.max_connections = server.max_connections
        self.too_large = _canned(431, "Request Header Fields Too Large", "The request's header "
                                 f"section exceeds {server.max_header_bytes} bytes "
                                 "(server.max_header_bytes)", "request_header_fields_too_large")
        self._refused = 0
        self._logged_at = -_LOG_EVERY_S

    def refused(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            log.warning("connection cap reached: %d connections open (server.max_connections); "
                        "refused %d new connection(s) since the last report", self.max_connections,
                        self._refused)
            self._logged_at, self._refused = now, 0


class GuardedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """The coalescing protocol with ``[server]``'s client limits; build with
    :func:`protocol_class`. Timers are armed only when a head or body spans reads, so a
    request that arrives in one read costs no timer at all."""

    limits: ClassVar[_Limits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn arms this after every response: the idle time allowed between requests
        self.timeout_keep_alive = self.limits.keepalive_timeout_s  # type: ignore[assignment]
        self._phase: Phase = "head"
        self._timed: Phase = "done"  # the phase the deadline timer belongs to
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the current head, from reads that did not complete it
        self._tail = b""  # the last bytes of those reads: a head end may straddle two reads
        self._heads = 0
        self._refused = False  # over the connection cap, or answered 431/408: bytes are dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refused = True
            self.limits.refused()
            transport.write(_BUSY)
            transport.close()
            return
        super().connection_made(transport)
        self._arm("head")  # a new connection must send its first head in time

    def connection_lost(self, exc: Exception | None) -> None:
        if self.flow is None:  # refused at connection_made: uvicorn never saw it
            return
        self._arm("done")
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        limits = self.limits
        if self._phase == "head" and self._head_bytes + len(data) > limits.max_header_bytes:
            joined = self._tail + data
            end = joined.find(b"\r\n\r\n")
            if end < 0 or self._head_bytes - len(self._tail) + end + 4 > limits.max_header_bytes:
                self._reject(limits.too_large)
                return
        heads = self._heads
        super().data_received(data)
        if self._phase == "head" and heads == self._heads:  # a head still incomplete
            self._head_bytes += len(data)
            self._tail = data[-3:]
        if self._timed != self._phase:
            self._arm(self._phase)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "head"

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._phase = "body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase, self._head_bytes, self._tail = "done", 0, b""

    def _arm(self, phase: Phase) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._timed = phase
        if phase != "done":
            limits = self.limits
            delay = limits.header_timeout_s if phase == "head" else limits.body_timeout_s
            self._deadline = self.loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self._phase == "head":
            self._arm("head")  # a pipelined head waits behind an answer still going out
            return
        if self._phase == "head" and self._head_bytes == 0:
            self.transport.close()  # never sent a byte: no answer owed
        elif cycle is not None and cycle.response_started and self._phase == "body":
            self.transport.close()
        else:
            self._reject(_TIMEOUT)

    def _reject(self, response: bytes) -> None:
        """Answer and close without a reset: closing a socket with unread input makes the
        kernel send RST, which can destroy the answer before the client reads it. So send
        FIN after the answer and drop input until the client closes (or _LINGER_S)."""
        self._arm("done")
        self._refused = True
        transport = self.transport
        transport.write(response)
        transport.write(b"")  # releases the head _HeadHoldingTransport would hold a loop step
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(_LINGER_S, transport.close)
        else:
            transport.close()


def protocol_class(server: ServerConfig) -> type[GuardedHttpToolsProtocol]:
    """The HTTP protocol ``routegate serve`` runs, with ``server``'s client limits."""
    return type("RoutegateHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": _Limits(server)})
