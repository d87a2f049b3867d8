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
from routegate.middleware.request.errors import error_body

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

Phase = Literal["head", "body", "done"]  # deadline for a request head / its body / none


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
        self._timed: Phase = "done"  # the phase the deadline belongs to
        self._due = 0.0  # loop time the timed phase must end by
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._head_bytes = 0  # of the current head, from reads that did not complete it
        self._tail = b""  # the last bytes of those reads: a head end may straddle two reads
        self._events = 0  # heads and messages completed: did this read complete one?
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
        self._timed = "done"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        events = self._events
        super().data_received(data)
        if self._phase == "body":
            if self._timed != "body":
                self._arm("body")
        elif events == self._events:  # inside a head that this read did not complete
            self._head_bytes += len(data)
            self._tail = data[-3:]
            if self._timed != "head":
                self._arm("head")
        elif self._timed != "done":
            self._arm("done")  # a whole request arrived: no deadline while it is answered

    def on_headers_complete(self) -> None:
        self._events += 1
        self._phase = "body"
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._events += 1
        # the next bytes on this connection are the next request's head
        self._phase, self._head_bytes, self._tail = "head", 0, b""

    def _arm(self, phase: Phase) -> None:
        # One lazy timer per connection, like http1.Connection's: arming moves ``_due``
        # (cheap), and a timer is only created when none is pending early enough, so a
        # keep-alive client whose bodies take two reads costs no timer per request
        # (uvloop's call_later + cancel: ~3 µs).
        self._timed = phase
        if phase == "done":
            return  # a pending timer finds nothing to do
        limits = self.limits
        self._due = self.loop.time() + (limits.header_timeout_s if phase == "head"
                                        else limits.body_timeout_s)
        if self._timer is not None and self._timer_at > self._due:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer_at = self._due
            self._timer = self.loop.call_at(self._due, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._timed == "done" or self.transport.is_closing():
            return
        if self.loop.time() < self._due - 0.001:  # re-armed since: wait for the new due
            self._timer_at = self._due
            self._timer = self.loop.call_at(self._due, self._expire)
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
