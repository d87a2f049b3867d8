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
response before its end closes the connection. A request is sent again on another connection
only when the one it got was found closed before any byte of the request was written; once
a byte went out, the provider may have it (a generation could run twice), so the failure goes
to the relay, which decides. Proxies, trust stores and response caps are per origin
(:mod:`routegate.middleware.upstream.origins`). One connection's protocol lives in
:mod:`routegate.middleware.upstream.http1`; this module pools them and speaks httpx.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable

import httpx

from routegate.middleware.upstream.exchange import ResponseBody
from routegate.middleware.upstream.http1 import Connection, RetryElsewhere
from routegate.middleware.upstream.origins import (
    OriginOptions,
    ProxyError,
    UnsafeHeader,
    connect_error,
    open_tunnel,
    resolve_proxy,
    unsafe_header_name,
)

__all__ = ["FastTransport", "raw_chunks", "send_upstream"]

_NO_TIMEOUTS: dict[str, float | None] = {}
_RESPONSE_EXTENSIONS = {"http_version": b"HTTP/1.1"}
_DEFAULT_OPTIONS = OriginOptions()


class ConnectionPool:
    """Connections to one origin: idle ones (most recent last), a cap, and FIFO waiters."""

    def __init__(self, transport: FastTransport, scheme: bytes, host: str, port: int,
                 options: OriginOptions) -> None:
        self.loop = asyncio.get_running_loop()
        self._transport = transport
        self._host = host
        self._port = port
        self._tls = scheme == b"https"
        self.options = options
        self.proxy = resolve_proxy(options, scheme.decode(), host, port, transport.environ)
        # plain HTTP through a proxy: absolute-form request targets, credentials on each request
        self.absolute: bytes | None = None
        self.proxy_headers = b""
        if self.proxy is not None and not self._tls:
            name = b"[" + host.encode() + b"]" if ":" in host else host.encode("idna")
            self.absolute = b"http://" + name + (b"" if port == 80 else b":%d" % port)
            if self.proxy.authorization:
                self.proxy_headers = b"Proxy-Authorization: " + self.proxy.authorization + b"\r\n"
        self.idle: list[Connection] = []
        self.size = 0  # open connections, idle ones included
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()

    async def acquire(self, timeouts: dict[str, float | None], *,
                      fresh: bool = False) -> Connection:
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

    async def _queue(self, timeouts: dict[str, float | None]) -> Connection | None:
        """Wait for a released connection (returned) or a free slot (None)."""
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
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

    async def _connect(self, timeouts: dict[str, float | None]) -> Connection:
        context = self._transport.ssl_context(self.options.ca_bundle) if self._tls else None
        made: list[Connection] = []

        def factory() -> Connection:
            made.append(Connection(self))
            return made[-1]

        try:
            async with asyncio.timeout(timeouts.get("connect")):
                if self.proxy is not None:
                    await open_tunnel(self.loop, self.proxy, self._host, self._port, context,
                                      self._transport.ssl_context, factory())
                else:
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
                raise connect_error(exc, f"{self._host}:{self._port}") from exc
            raise
        connection = made[-1]
        connection.counted = True
        self._transport.connections_opened += 1
        return connection

    def release(self, connection: Connection) -> None:
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

    def discard(self, connection: Connection) -> None:
        """A connection closed: free its slot (and its place among the idle ones)."""
        self.size -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        self._wake_one(None)

    def _wake_one(self, connection: Connection | None) -> None:
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
                 verify: ssl.SSLContext | bool = True,
                 environ: Callable[[str], str | None] = os.environ.get) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20,
                                        keepalive_expiry=5.0)
        self.max_connections = limits.max_connections or 1 << 30
        self.max_keepalive = (limits.max_keepalive_connections
                              if limits.max_keepalive_connections is not None else 1 << 30)
        self.keepalive_expiry = limits.keepalive_expiry
        self._verify = verify
        self._ssl: ssl.SSLContext | None = verify if isinstance(verify, ssl.SSLContext) else None
        self.environ = environ  # read once per origin, when its pool is made
        self._pools: dict[tuple[bytes, str, int], ConnectionPool] = {}
        self._options: dict[tuple[bytes, str, int], OriginOptions] = {}
        self._bundles: dict[str, ssl.SSLContext] = {}
        self.connections_opened = 0  # for tests and stats: how well keep-alive works

    def configure(self, base_url: str, options: OriginOptions) -> None:
        """Settings for the origin of ``base_url`` (a provider); others get the defaults.
        Changed settings take a new pool; requests in flight finish on the old one."""
        key = _origin(httpx.URL(base_url))
        if self._options.get(key) != options:
            self._options[key] = options
            pool = self._pools.pop(key, None)
            if pool is not None:
                pool.close()

    def ssl_context(self, ca_bundle: str = "") -> ssl.SSLContext:
        """The verifying context: the system's trust store plus certifi's, or ``ca_bundle``
        alone. Built on first use: loading trust stores costs milliseconds."""
        if ca_bundle:
            context = self._bundles.get(ca_bundle)
            if context is None:
                context = self._bundles[ca_bundle] = ssl.create_default_context(cafile=ca_bundle)
                context.set_alpn_protocols(["http/1.1"])
            return context
        if self._ssl is None:
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
        key = _origin(request.url)
        pool = self._pools.get(key)
        if pool is None:
            if key[0] not in (b"http", b"https"):
                raise httpx.UnsupportedProtocol(f"unsupported URL scheme {key[0]!r}")
            options = self._options.get(key) or _DEFAULT_OPTIONS
            pool = self._pools[key] = ConnectionPool(self, *key, options)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", _NO_TIMEOUTS)
        method = request.method.encode("ascii")
        head, body, chunked = _encode_request(request, method, pool.absolute, pool.proxy_headers)
        expects_body = method != b"HEAD"
        for attempt in (0, 1):
            connection = await pool.acquire(timeouts, fresh=attempt > 0)
            try:
                exchange = await connection.request(head, body, chunked, expects_body, timeouts)
            except RetryElsewhere as retry:  # found closed before a byte was written
                if attempt:
                    raise retry.cause from None
                continue
            except BaseException:
                connection.close()  # cancelled or failed mid-request: the state is unknown
                raise
            break
        if exchange.status == 407 and pool.absolute is not None and pool.proxy is not None:
            connection.close()
            raise ProxyError(f"proxy {pool.proxy.host}:{pool.proxy.port} demands "
                             "authentication (407)")
        return httpx.Response(
            exchange.status, headers=exchange.headers, stream=ResponseBody(connection, exchange),
            request=request,
            extensions={**_RESPONSE_EXTENSIONS, "reason_phrase": exchange.reason})

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _encode_request(request: httpx.Request, method: bytes, absolute: bytes | None = None,
                    proxy_headers: bytes = b""
                    ) -> tuple[bytes, bytes | httpx.AsyncByteStream | None, bool]:
    """The request head, and the body as bytes (when known) or a stream to send chunked.
    Raises UnsafeHeader when a header name or value holds CR, LF or NUL."""
    stream = request.stream
    body: bytes | httpx.AsyncByteStream | None
    if isinstance(stream, httpx.ByteStream):
        body = b"".join(stream)  # bytes content: one piece (the join hands it back as is)
    elif isinstance(stream, httpx.AsyncByteStream):
        body = stream
    else:
        raise RuntimeError("FastTransport needs an async request body")
    chunked = False
    target = request.url.raw_path if absolute is None else absolute + request.url.raw_path
    lines = [method, b" ", target, b" HTTP/1.1\r\n", proxy_headers]
    raw = request.headers.raw
    for name, value in raw:
        if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    # Exactly one line break per line, no NUL: three scans of ~0.5 KB instead of a per-header
    # check. The proxy line (if any) and the request line hold none of their own.
    breaks = len(raw) + 2 + (proxy_headers != b"")
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\0" in head:
        raise UnsafeHeader(f"header '{unsafe_header_name(raw)}' holds CR, LF or NUL; "
                           "the request was not sent")
    return head, body, chunked


def _origin(url: httpx.URL) -> tuple[bytes, str, int]:
    scheme = url.raw_scheme
    return scheme, url.host, url.port or (443 if scheme == b"https" else 80)


async def send_upstream(client: httpx.AsyncClient, request: httpx.Request, *,
                        stream: bool = False) -> httpx.Response:
    """``client.send(request, stream=stream)`` minus the layers a gateway never uses.

    The request goes straight to the transport the client picks for its URL (mounts
    included; FastTransport applies the environment's and each provider's proxy itself).
    Auth flows, redirects and event hooks are skipped only when the client has none
    configured; cookies that providers set are not collected into the client's jar (one
    shared jar would carry them into every later upstream request).
    About a fifth of the gateway's CPU per request went to those layers. With FastTransport a
    whole body is capped at the origin's ``max_body_bytes`` (ResponseTooLarge past it).
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
            if isinstance(body, ResponseBody) and not body.encoded:
                # What aread() leaves behind, without its (identity) decoder and chunker
                # layers: ~20 µs less per request.
                response._content = await body.read()
                response.is_stream_consumed = response.is_closed = True
            elif isinstance(body, ResponseBody):  # compressed: capped as sent, then decoded
                response.stream = httpx.ByteStream(await body.read())
                await response.aread()
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
    if isinstance(body, ResponseBody):
        return body.__aiter__()
    return response.aiter_raw()
