"""Guards for the library internals routegate relies on (their ranges are pinned in
pyproject.toml). When a new release changes one of these, this file fails with the name of
what changed, before the gateway misbehaves in production:

- uvicorn: ``HttpToolsProtocol`` (middleware/standalone/http_protocol.py subclasses it and wraps the
  transport in ``connection_made``; it reads ``self.loop`` and writes through
  ``self.transport``);
- httpx: ``AsyncClient._transport_for_url`` and ``Response._content`` (send_upstream in
  middleware/upstream/transport.py);
- httptools: an exception raised in a parser callback stops ``feed_data`` with
  ``HttpParserCallbackError`` whose ``__context__`` is that exception (middleware/upstream/http1.py
  reports capped response heads that way).
"""

from __future__ import annotations

import asyncio
import inspect

import httptools
import httpx
import pytest

from routegate.middleware.asgi_types import Receive, Scope, Send
from routegate.middleware.upstream.origins import ResponseTooLarge


def test_uvicorn_httptools_protocol_internals() -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from routegate.middleware.standalone.http_protocol import CoalescingHttpToolsProtocol

    assert issubclass(CoalescingHttpToolsProtocol, HttpToolsProtocol)
    params = list(inspect.signature(HttpToolsProtocol.connection_made).parameters)
    assert params == ["self", "transport"], f"connection_made changed: {params}"
    source = inspect.getsource(HttpToolsProtocol)
    for used in ("self.loop", "self.transport = transport", "self.transport.write("):
        assert used in source, f"uvicorn's HttpToolsProtocol no longer has {used!r}"


async def test_uvicorn_protocol_writes_through_the_wrapped_transport() -> None:
    """The subclass's wrapper sees every write: the head goes out with the body."""
    from bench.fakes import serve_in_thread
    from routegate.middleware.standalone.http_protocol import CoalescingHttpToolsProtocol

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with serve_in_thread(app, http=CoalescingHttpToolsProtocol) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        first = await reader.read(65536)  # head and body in one segment
        writer.close()
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"\r\n\r\nok")


async def test_httpx_private_attributes() -> None:
    mounted = httpx.MockTransport(lambda request: httpx.Response(200))
    async with httpx.AsyncClient(mounts={"http://mounted": mounted}) as client:
        assert client._transport_for_url(httpx.URL("http://mounted/x")) is mounted, \
            "httpx.AsyncClient._transport_for_url changed"
    response = httpx.Response(200)
    response._content = b"set directly"
    assert response.content == b"set directly", "httpx.Response._content changed"


def test_httptools_callback_error_keeps_its_cause() -> None:
    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            raise ResponseTooLarge("stop")

    parser = httptools.HttpResponseParser(Callbacks())
    with pytest.raises(httptools.HttpParserError) as caught:
        parser.feed_data(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\n")
    assert isinstance(caught.value.__context__, ResponseTooLarge), \
        "httptools no longer chains callback exceptions"
