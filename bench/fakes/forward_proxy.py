"""A small HTTP forward proxy for tests, in its own thread and event loop on 127.0.0.1.

It speaks what corporate egress proxies speak: absolute-form requests for ``http://`` targets
(``GET http://host:port/path HTTP/1.1``, forwarded with ``Proxy-Authorization`` removed) and
``CONNECT host:port`` tunnels for ``https://`` ones (bytes relayed both ways, TLS end to end).
With ``credentials`` set it demands ``Proxy-Authorization: Basic ...`` and answers 407
otherwise. Every request line it accepted is recorded in :attr:`ForwardProxy.seen`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["ForwardProxy", "serve_forward_proxy"]


@dataclass
class ForwardProxy:
    url: str = ""
    credentials: str | None = None  # "user:password"
    seen: list[str] = field(default_factory=list)  # request lines, e.g. "CONNECT localhost:443"
    authorizations: list[str] = field(default_factory=list)  # Proxy-Authorization values

    def _authorized(self, headers: list[tuple[str, str]]) -> bool:
        if self.credentials is None:
            return True
        expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
        return any(k == "proxy-authorization" and v == expected for k, v in headers)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:  # stopped with the connection open: end quietly
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = [(k.strip().lower(), v.strip()) for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)]
        self.seen.append(f"{method} {target}")
        self.authorizations += [v for k, v in headers if k == "proxy-authorization"]
        if not self._authorized(headers):
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n")
            return True
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            try:
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                return False
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await _relay_both(reader, writer, up_reader, up_writer)
            return False
        parts = urlsplit(target)
        length = next((int(v) for k, v in headers if k == "content-length"), 0)
        body = await reader.readexactly(length)
        up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        kept = "".join(f"{k}: {v}\r\n" for k, v in headers
                       if k not in ("proxy-authorization", "connection"))
        up_writer.write(f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} "
                        f"HTTP/1.1\r\n{kept}connection: close\r\n\r\n".encode("latin-1") + body)
        answer = await up_reader.read()  # the upstream closes after its one answer
        up_writer.close()
        answer_head, _, answer_body = answer.partition(b"\r\n\r\n")
        kept_head = b"\r\n".join(line for line in answer_head.split(b"\r\n")
                                 if not line.lower().startswith((b"connection:", b"transfer-encoding:",
                                                                 b"content-length:")))
        body_bytes = _dechunk(answer_body) if b"transfer-encoding: chunked" in answer_head.lower() \
            else answer_body
        writer.write(kept_head + b"\r\ncontent-length: %d\r\n\r\n" % len(body_bytes) + body_bytes)
        return True


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


async def _relay_both(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@contextmanager
def serve_forward_proxy(credentials: str | None = None,
                        tls: ssl.SSLContext | None = None) -> Iterator[ForwardProxy]:
    """Run a :class:`ForwardProxy` on a free port until the block ends (``https://`` with
    ``tls``, a server context)."""
    proxy = ForwardProxy(credentials=credentials)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, ssl=tls)
        base = "https://localhost" if tls else "http://127.0.0.1"  # TLS: the cert's name
        proxy.url = f"{base}:{server.sockets[0].getsockname()[1]}"
        ready.set()
        async with server:
            await stop.wait()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:  # open tunnels and kept-alive clients
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the forward proxy did not start")
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        with contextlib.suppress(RuntimeError):
            loop.close()
