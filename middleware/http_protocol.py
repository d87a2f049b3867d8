"""uvicorn's httptools protocol, writing each response's head and first body part together.

uvicorn writes the status line and headers the moment ``http.response.start`` is sent and the
body separately: two ``send()`` syscalls and two TCP segments per answer, and the client
wakes up twice. A JSON answer's body always follows its start in the same event-loop step
(the relay has the whole answer before it starts), so holding the head until then costs
nothing: measured on the gateway bench, one syscall less per answer. A head with no body
right behind it (a stream still waiting for its first event) goes out at the end of that
loop step, so nothing is ever delayed past the step that produced it.

Used by ``routegate serve``; when routegate is mounted in a host app, the host's server writes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol"]

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
