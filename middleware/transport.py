"""A lean HTTP/1.1 keep-alive transport behind the httpx API.

httpx's default transport (httpcore) and aiohttp's both spend most of a gateway request's CPU
in generic machinery the gateway never uses (auth and cookie hooks, per-request task trees,
trace callbacks). :class:`FastTransport` is the small remainder: an ``asyncio.Protocol`` per
connection, ``httptools`` for the response parsing, and a keep-alive pool per
``(scheme, host, port)``. It is an ordinary :class:`httpx.AsyncBaseTransport`, so callers keep
``httpx.Request`` and ``httpx.Response`` and the httpx exception tree::

    httpx.TransportError
     ├─ ConnectError        refused, unreachable, DNS, TLS handshake
     ├─ ConnectTimeout      no connection within timeout["connect"]
     ├─ PoolTimeout         no free connection within timeout["pool"]
     ├─ ReadTimeout         no byte from the server for timeout["read"]
     ├─ ReadError           the connection was reset
     ├─ WriteError          the request could not be written
     └─ RemoteProtocolError the server closed early or sent malformed HTTP

Response bodies are streamed as they arrive: whatever one read from the socket delivered is
handed to the consumer at once, never held back to fill a buffer. A connection goes back to
the pool only when its response completed cleanly and both sides allow keep-alive; closing a
response before its end closes the connection. A request on a reused keep-alive connection
that breaks before any response byte (the server closed the idle connection as the request
went out) is retried once on another connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

__all__ = ["FastTransport", "raw_chunks", "send_upstream"]

_HIGH_WATER = 256 * 1024  # unread body bytes at which the socket stops being read
_NO_TIMEOUTS: dict[str, float | None] = {}
_RESPONSE_EXTENSIONS = {"http_version": b"HTTP/1.1"}


class _Retry(Exception):
    """A reused connection broke before any response byte: safe to send again."""

    def __init__(self, cause: httpx.TransportError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Exchange:
    """One request/response on a connection; outlives the connection's use of it, so a body
    received in full stays readable after the connection went back to the pool."""

    __slots__ = ("buffered", "complete", "encoded", "error", "headers", "headers_done", "pieces",
                 "reason", "received", "status", "until_eof", "waiter")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.until_eof = False  # neither content-length nor chunked: the body ends with the socket
        self.encoded = False  # a content-encoding header came: httpx must decode the body
        self.pieces: list[bytes] = []
        self.buffered = 0
        self.received = False  # any response byte arrived
        self.complete = False
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; parser callbacks feed the current exchange."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.counted = False  # holds a slot in the pool's size
        self.reused = False
        self.idle_since = 0.0
        self._exchange: _Exchange | None = None
        self._release = False
        self._reading_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_timeout: float | None = None
        self._activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._expects_body = True

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:  # nothing asked for: a server talking out of turn
            self.close()
            return
        exchange.received = True
        if self._timer is not None:
            self._activity = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()
            return
        if exchange.pieces:
            if (exchange.buffered >= _HIGH_WATER and not exchange.complete
                    and not self._reading_paused and self.transport):
                self._reading_paused = True
                self.transport.pause_reading()
            exchange.wake()
        if self._release:
            self._release = False
            self._finish()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.complete and exchange.error is None:
            if exchange.headers_done and exchange.until_eof and exc is None:
                exchange.complete = True
                exchange.wake()
            elif exc is not None and not isinstance(exc, httpx.TransportError):
                self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
            elif not exchange.headers_done:
                self._fail(httpx.RemoteProtocolError(
                    "Server disconnected without sending a response."))
            else:
                self._fail(httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"))
        self._wake_writer()
        self._mark_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        if self._exchange is not None:
            self._exchange.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._exchange is not None:
            self._exchange.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        exchange.status = self._parser.get_status_code()
        if exchange.status < 200:  # 1xx interim answer: the real one follows
            exchange.headers.clear()
            return
        exchange.headers_done = True
        framed = False
        for name, value in exchange.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (lowered == b"transfer-encoding"
                                                and b"chunked" in value.lower()):
                framed = True
            elif lowered == b"content-encoding":
                exchange.encoded = True
        exchange.until_eof = (not framed and self._expects_body
                              and exchange.status not in (204, 304))
        exchange.wake()
        if not self._expects_body:  # httptools cannot know that a HEAD answer has no body
            exchange.complete = True
            self.close()

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.pieces.append(body)
            exchange.buffered += len(body)

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is None or exchange.status < 200:
            return
        exchange.complete = True
        exchange.wake()
        self._release = self._parser.should_keep_alive()
        if not self._release:
            self.close()

    # -- used by the transport ---------------------------------------------------------------
    async def request(self, head: bytes, body: bytes | httpx.AsyncByteStream | None,
                      chunked: bool, expects_body: bool,
                      timeouts: dict[str, float | None]) -> _Exchange:
        """Write one request and wait for its response headers."""
        exchange = _Exchange()
        self._exchange = exchange
        self._expects_body = expects_body
        self._read_timeout = timeouts.get("read")
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return self._broken(exchange, httpx.RemoteProtocolError(
                "Server disconnected without sending a response."))
        try:
            if isinstance(body, bytes):
                transport.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    transport.write(body)
            else:
                transport.write(head)
                if body is not None:
                    async for chunk in body:
                        if not chunk:
                            continue
                        if chunked:
                            transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        else:
                            transport.write(chunk)
                        await self._drain(timeouts)
                    if chunked:
                        transport.write(b"0\r\n\r\n")
            await self._drain(timeouts)
        except (OSError, RuntimeError) as exc:
            return self._broken(exchange, httpx.WriteError(str(exc) or type(exc).__name__))
        while not exchange.headers_done:
            if exchange.error is not None:
                return self._broken(exchange, exchange.error)
            await self.wait(exchange)
        return exchange

    def _broken(self, exchange: _Exchange, error: httpx.TransportError) -> _Exchange:
        self.close()
        if (self.reused and not exchange.received
                and not isinstance(error, httpx.TimeoutException)):
            raise _Retry(error)
        raise error

    async def _drain(self, timeouts: dict[str, float | None]) -> None:
        if not self._write_paused:
            return
        if self.closed:
            raise httpx.WriteError("connection closed while writing")
        waiter = self._loop.create_future()
        self._write_waiter = waiter
        try:
            async with asyncio.timeout(timeouts.get("write")):
                await waiter
        except TimeoutError as exc:
            self.close()
            raise httpx.WriteTimeout("request write timed out") from exc
        if self.closed:
            raise httpx.WriteError("connection closed while writing")

    def _wake_writer(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, exchange: _Exchange) -> None:
        """Until the exchange has news (headers, body, end or error); read timeout applies."""
        waiter = self._loop.create_future()
        exchange.waiter = waiter
        if self._read_timeout is not None:
            self._activity = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(self._activity + self._read_timeout,
                                                 self._check_timeout)
        await waiter

    def _check_timeout(self) -> None:
        # One lazy timer per exchange instead of one per wait: data pushes ``_activity``
        # forward, and the timer only fires for real after a full quiet period.
        self._timer = None
        exchange = self._exchange
        timeout = self._read_timeout
        if exchange is None or exchange.complete or timeout is None or self.closed:
            return
        due = self._activity + timeout
        if exchange.waiter is None or self._loop.time() < due - 0.001:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        self._fail(httpx.ReadTimeout(f"no data from the server for {timeout:g}s"))
        self.close()

    def consumed(self, exchange: _Exchange) -> None:
        """The consumer took the buffered body: resume reading if it was paused."""
        exchange.buffered = 0
        if self._reading_paused and self._exchange is exchange and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    def _fail(self, error: httpx.TransportError) -> None:
        exchange = self._exchange
        if exchange is not None and not exchange.complete and exchange.error is None:
            exchange.error = error
            exchange.wake()

    def _finish(self) -> None:
        """Response complete with keep-alive on both sides: back to the pool."""
        self._exchange = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.closed:
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False  # the next exchange must hear its answer
            self.transport.resume_reading()
        self.reused = True
        self._pool.release(self)

    def abandon(self, exchange: _Exchange) -> None:
        """The consumer closed the response before its end: the connection cannot be reused."""
        if self._exchange is exchange:
            self.close()

    def close(self) -> None:
        self._fail(httpx.RemoteProtocolError("connection closed"))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._mark_closed()

    def _mark_closed(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed:
            self.closed = True
            if self.counted:
                self._pool.discard(self)


class _Body(httpx.AsyncByteStream):
    """The response body, piece by piece as the socket delivers it."""

    def __init__(self, connection: _Connection, exchange: _Exchange) -> None:
        self._connection = connection
        self._exchange = exchange

    @property
    def encoded(self) -> bool:
        return self._exchange.encoded

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        connection = self._connection
        while True:
            pieces = exchange.pieces
            if pieces:
                exchange.pieces = []
                connection.consumed(exchange)
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
            elif exchange.complete:
                return
            elif exchange.error is not None:
                raise exchange.error
            else:
                await connection.wait(exchange)

    async def read(self) -> bytes:
        """The whole body, without the async-generator round trips of iterating."""
        exchange = self._exchange
        connection = self._connection
        parts: list[bytes] = []
        while True:
            if exchange.pieces:
                parts += exchange.pieces
                exchange.pieces = []
                connection.consumed(exchange)
            elif exchange.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            elif exchange.error is not None:
                raise exchange.error
            else:
                await connection.wait(exchange)

    async def aclose(self) -> None:
        exchange = self._exchange
        if not exchange.complete:
            exchange.complete = True
            self._connection.abandon(exchange)


class _Pool:
    """Connections to one origin: idle ones (most recent last), a cap, and FIFO waiters."""

    def __init__(self, transport: FastTransport, scheme: bytes, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        self._transport = transport
        self._host = host
        self._port = port
        self._tls = scheme == b"https"
        self.idle: list[_Connection] = []
        self.size = 0  # open connections, idle ones included
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    async def acquire(self, timeouts: dict[str, float | None], *,
                      fresh: bool = False) -> _Connection:
        idle = self.idle
        if idle and not fresh:
            expiry = self._transport.keepalive_expiry
            now = self.loop.time()
            while idle:
                connection = idle.pop()
                if connection.closed:
                    continue
                if expiry is not None and now - connection.idle_since > expiry:
                    connection.close()
                    continue
                return connection
        if self.size >= self._transport.max_connections:
            given = await self._queue(timeouts)
            if given is not None:
                return given
        self.size += 1
        try:
            return await self._connect(timeouts)
        except BaseException:
            self.size -= 1
            self._wake_one(None)
            raise

    async def _queue(self, timeouts: dict[str, float | None]) -> _Connection | None:
        """Wait for a released connection (returned) or a free slot (None)."""
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                given = waiter.result()  # handed over as we gave up: pass it on
                if given is not None:
                    self.release(given)
                else:
                    self._wake_one(None)
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("no free connection in the pool") from exc
            raise

    async def _connect(self, timeouts: dict[str, float | None]) -> _Connection:
        context = self._transport.ssl_context() if self._tls else None
        made: list[_Connection] = []

        def factory() -> _Connection:
            made.append(_Connection(self))
            return made[-1]

        try:
            async with asyncio.timeout(timeouts.get("connect")):
                await self.loop.create_connection(
                    factory, self._host, self._port, ssl=context,
                    server_hostname=self._host if context is not None else None)
        except BaseException as exc:
            for connection in made:  # e.g. cancelled as the connection came up
                connection.close()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout(
                    f"connecting to {self._host}:{self._port} timed out") from exc
            if isinstance(exc, (OSError, ssl.SSLError)):
                raise httpx.ConnectError(f"{exc} ({self._host}:{self._port})") from exc
            raise
        connection = made[-1]
        connection.counted = True
        self._transport.connections_opened += 1
        return connection

    def release(self, connection: _Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if len(self.idle) >= self._transport.max_keepalive:
            connection.close()
            return
        connection.idle_since = self.loop.time()
        self.idle.append(connection)

    def discard(self, connection: _Connection) -> None:
        """A connection closed: free its slot (and its place among the idle ones)."""
        self.size -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        self._wake_one(None)

    def _wake_one(self, connection: _Connection | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return

    def close(self) -> None:
        for connection in list(self.idle):
            connection.close()
        self.idle.clear()


class FastTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive over asyncio protocols and httptools; see the module doc.

    ``limits`` apply per origin (scheme, host, port). ``verify`` is an ``ssl.SSLContext``,
    or True for the system's trust store plus certifi's, or False to skip verification.
    """

    def __init__(self, *, limits: httpx.Limits | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20,
                                        keepalive_expiry=5.0)
        self.max_connections = limits.max_connections or 1 << 30
        self.max_keepalive = (limits.max_keepalive_connections
                              if limits.max_keepalive_connections is not None else 1 << 30)
        self.keepalive_expiry = limits.keepalive_expiry
        self._verify = verify
        self._ssl: ssl.SSLContext | None = verify if isinstance(verify, ssl.SSLContext) else None
        self._pools: dict[tuple[bytes, str, int], _Pool] = {}
        self.connections_opened = 0  # for tests and stats: how well keep-alive works

    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:  # built on first use: loading trust stores costs milliseconds
            if self._verify:
                import certifi

                context = ssl.create_default_context()
                context.load_verify_locations(certifi.where())
            else:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            self._ssl = context
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        port = url.port or (443 if scheme == b"https" else 80)
        host = url.host
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            if scheme not in (b"http", b"https"):
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
            pool = self._pools[key] = _Pool(self, scheme, host, port)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", _NO_TIMEOUTS)
        method = request.method.encode("ascii")
        head, body, chunked = _encode_request(request, method)
        expects_body = method != b"HEAD"
        for attempt in (0, 1):
            connection = await pool.acquire(timeouts, fresh=attempt > 0)
            try:
                exchange = await connection.request(head, body, chunked, expects_body, timeouts)
            except _Retry as retry:
                if attempt or not isinstance(body, bytes):
                    raise retry.cause from None
                continue
            except BaseException:
                connection.close()  # cancelled or failed mid-request: the state is unknown
                raise
            break
        return httpx.Response(
            exchange.status, headers=exchange.headers, stream=_Body(connection, exchange),
            request=request,
            extensions={**_RESPONSE_EXTENSIONS, "reason_phrase": exchange.reason})

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _encode_request(request: httpx.Request, method: bytes
                    ) -> tuple[bytes, bytes | httpx.AsyncByteStream | None, bool]:
    """The request head, and the body as bytes (when known) or a stream to send chunked."""
    stream = request.stream
    body: bytes | httpx.AsyncByteStream | None
    if isinstance(stream, httpx.ByteStream):
        body = b"".join(stream)  # bytes content: one piece (the join hands it back as is)
    elif isinstance(stream, httpx.AsyncByteStream):
        body = stream
    else:
        raise RuntimeError("FastTransport needs an async request body")
    chunked = False
    lines = [method, b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), body, chunked


async def send_upstream(client: httpx.AsyncClient, request: httpx.Request, *,
                        stream: bool = False) -> httpx.Response:
    """``client.send(request, stream=stream)`` minus the layers a gateway never uses.

    The request goes straight to the transport the client picks for its URL (mounts and
    environment proxies included). Auth flows, redirects and event hooks are skipped only
    when the client has none configured; cookies that providers set are not collected into
    the client's jar (one shared jar would carry them into every later upstream request).
    About a fifth of the gateway's CPU per request went to those layers.
    """
    if client.auth is not None or client.follow_redirects or any(client.event_hooks.values()):
        return await client.send(request, stream=stream)
    # httpx has no public "transport for this URL"; the private lookup keeps mounts working.
    transport: httpx.AsyncBaseTransport = client._transport_for_url(request.url)
    response = await transport.handle_async_request(request)
    response.request = request  # as client.send does (FastTransport already has)
    if not stream:
        try:
            body = response.stream
            if isinstance(body, _Body) and not body.encoded:
                # What aread() leaves behind, without its (identity) decoder and chunker
                # layers: ~20 µs less per request.
                response._content = await body.read()
                response.is_stream_consumed = response.is_closed = True
            else:
                await response.aread()
        except BaseException:
            await response.aclose()
            raise
    return response


def raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """``response.aiter_raw()``: each piece as the socket delivered it (straight from
    FastTransport's body, skipping httpx's per-chunk bookkeeping)."""
    body = response.stream
    if isinstance(body, _Body):
        return body.__aiter__()
    return response.aiter_raw()
