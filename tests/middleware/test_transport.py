"""FastTransport against real servers on 127.0.0.1: the fake provider (uvicorn in a thread)
and small scripted HTTP/1.1 servers for the misbehaviours uvicorn will not produce."""

from __future__ import annotations

import asyncio
import gzip
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from bench.fakes import FakeProvider, serve_in_thread
from bench.fakes.origin import loop_policy
from routegate.middleware.upstream.transport import FastTransport, raw_chunks, send_upstream

KEY = {"authorization": "Bearer sk-test-provider-secret"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
CONTENT = re.compile(rb'"content":"[^"]')  # a non-empty content delta
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"

# The loop-factory hook that replaces this override lives in conftest.py, shared with every
# other test; until it is wanted there, this module keeps the (deprecated) policy override.
pytestmark = pytest.mark.filterwarnings("ignore:Overriding the \"event_loop_policy\" fixture")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the gateway serves on uvloop, libraries often on asyncio."""
    return loop_policy(request.param)


Script = Callable[["ScriptedServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    """Runs ``script`` for every accepted connection; counts connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests = 0
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()  # lets scripts that hang finish at teardown

    async def read_request(self, reader: asyncio.StreamReader) -> bool:
        """One request (head and body); False when the client closed instead."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        lines = head.decode("latin-1").lower().split("\r\n")
        length = next((int(line.split(":")[1]) for line in lines if line.startswith("content-length:")), 0)
        if any(line.startswith("transfer-encoding:") and "chunked" in line for line in lines):
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                body += (await reader.readexactly(size + 2))[:-2]
                if size == 0:
                    break
        else:
            body = await reader.readexactly(length)
        self.requests += 1
        self.bodies.append(body)
        return True

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def scripted(script: Script, *, tls: ssl.SSLContext | None = None
                   ) -> AsyncIterator[tuple[ScriptedServer, str]]:
    state = ScriptedServer(script)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield state, f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        state.release.set()
        server.close()


async def keep_alive(server: ScriptedServer, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    while await server.read_request(reader):
        writer.write(OK)


# -- against the fake provider (uvicorn, keep-alive, chunked streaming) --------------------------

async def test_keep_alive_reuses_one_connection() -> None:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as url:
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                response = await client.post(url + "/v1/chat/completions", json=CHAT, headers=KEY)
                assert response.status_code == 200
                assert response.json()["object"] == "chat.completion"
        assert transport.connections_opened == 1
        assert len(fake.requests) == 3


async def test_chunked_stream_arrives_piece_by_piece() -> None:
    """Causality, not stopwatch: whenever the client holds content event k, the provider has
    sent exactly k (the next is 200 ms away), so nothing was held back."""
    fake = FakeProvider(kind="openai", chunks=5, chunk_delay_s=0.2)
    with serve_in_thread(fake) as url:
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            request = client.build_request("POST", url + "/v1/chat/completions", headers=KEY,
                                           json={**CHAT, "stream": True})
            response = await send_upstream(client, request, stream=True)
            assert response.headers["transfer-encoding"] == "chunked"
            seen, held = 0, []
            async for piece in raw_chunks(response):
                events = len(CONTENT.findall(piece))
                if events:
                    seen += events
                    held.append((seen, fake.streams[-1].chunks_sent))
            await response.aclose()
        assert [k for k, _ in held] == [1, 2, 3, 4, 5]
        assert all(seen == sent for seen, sent in held)


async def test_closing_mid_body_closes_the_connection() -> None:
    fake = FakeProvider(kind="openai", chunks=50, chunk_delay_s=0.05)
    with serve_in_thread(fake) as url:
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            async with client.stream("POST", url + "/v1/chat/completions", headers=KEY,
                                     json={**CHAT, "stream": True}) as response:
                async for _ in response.aiter_raw():
                    break
            record = await asyncio.to_thread(fake.wait_for_stream_close, 5.0)
            assert record.client_disconnected
            assert record.chunks_sent < 50
            # the broken connection is not handed out again: the next request opens a new one
            response = await client.post(url + "/v1/chat/completions", json=CHAT, headers=KEY)
            assert response.status_code == 200
        assert transport.connections_opened == 2


async def test_pool_limit_queues_requests_and_times_out() -> None:
    fake = FakeProvider(kind="openai", chunks=50, chunk_delay_s=0.05)
    with serve_in_thread(fake) as url:
        transport = FastTransport(limits=httpx.Limits(max_connections=1))
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=0.2)) as client:
            answers = await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=CHAT,
                                                         headers=KEY) for _ in range(4)))
            assert [r.status_code for r in answers] == [200] * 4
            assert transport.connections_opened == 1
            async with client.stream("POST", url + "/v1/chat/completions", headers=KEY,
                                     json={**CHAT, "stream": True}):
                with pytest.raises(httpx.PoolTimeout):
                    await client.post(url + "/v1/chat/completions", json=CHAT, headers=KEY)


# -- scripted servers: what uvicorn will not do -------------------------------------------------

async def test_request_that_reached_the_server_is_not_replayed() -> None:
    """The server read the second request on the kept-alive connection and dropped it
    unanswered: the provider may be generating it, so it is not sent again (the relay's
    fallback decides); the error says the server disconnected."""

    async def answer_once_then_drop(server: ScriptedServer, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        if await server.read_request(reader):
            writer.write(OK)
            await server.read_request(reader)  # the next request: dropped unanswered

    async with scripted(answer_once_then_drop) as (server, url):
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post(url, content=b"one")).text == "ok"
            with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
                await client.post(url, content=b"two")
            assert (await client.post(url, content=b"three")).text == "ok"  # a new connection
        assert server.bodies == [b"one", b"two", b"three"]


async def test_connection_found_closed_before_writing_is_replaced() -> None:
    """A pooled connection whose socket is already closing when the request is about to be
    written (stale keep-alive found at write time): nothing went out, so the request goes
    out once on a fresh connection."""
    async with scripted(keep_alive) as (server, url):
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post(url, content=b"one")).text == "ok"
            (pool,) = transport._pools.values()
            (idle,) = pool.idle
            assert idle.transport is not None
            idle.transport.close()  # closing, but connection_lost has not run yet
            assert (await client.post(url, content=b"two")).text == "ok"
        assert server.bodies == [b"one", b"two"]
        assert transport.connections_opened == 2


async def test_idle_connection_closed_by_the_server_is_not_reused() -> None:
    async def answer_and_close(server: ScriptedServer, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        if await server.read_request(reader):
            writer.write(OK)  # keep-alive allowed, yet the server closes (idle timeout)

    async with scripted(answer_and_close) as (server, url):
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                assert (await client.get(url)).text == "ok"
                (pool,) = transport._pools.values()
                for _ in range(500):  # until the close reached the client (bounded)
                    if not pool.idle or pool.idle[0].closed:
                        break
                    await asyncio.sleep(0.01)
        assert server.connections == 3
        assert server.requests == 3  # seen closed in the pool: never written to, never resent


async def test_fresh_connection_dropped_before_the_answer_is_not_retried() -> None:
    async def drop(server: ScriptedServer, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    async with scripted(drop) as (server, url):
        async with httpx.AsyncClient(transport=FastTransport()) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(url, content=b"x")
        assert server.requests == 1


async def test_connection_broken_mid_body_raises() -> None:
    async def short_body(server: ScriptedServer, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")

    async with (scripted(short_body) as (_, url),
                httpx.AsyncClient(transport=FastTransport()) as client,
                client.stream("GET", url) as response):
        assert response.status_code == 200
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await response.aread()


async def test_body_until_close_and_chunked_request_body() -> None:
    async def echo_until_close(server: ScriptedServer, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        if await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\ngot " + server.bodies[-1])

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"a", b"bc", b"def"):
            yield part

    async with (scripted(echo_until_close) as (_, url),
                httpx.AsyncClient(transport=FastTransport()) as client):
        response = await client.post(url, content=parts())
        assert response.text == "got abcdef"


async def test_malformed_answer_is_a_protocol_error() -> None:
    async def garbage(server: ScriptedServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if await server.read_request(reader):
            writer.write(b"SMTP ready\r\n\r\n")

    async with scripted(garbage) as (_, url), httpx.AsyncClient(transport=FastTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(url)


async def test_silent_server_is_a_read_timeout() -> None:
    async def silent(server: ScriptedServer, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await server.release.wait()

    async with scripted(silent) as (_, url), httpx.AsyncClient(transport=FastTransport(),
                                 timeout=httpx.Timeout(5.0, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url)


async def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connecting is refused
        async with httpx.AsyncClient(transport=FastTransport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")


# -- TLS -----------------------------------------------------------------------------------------

@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_tls_verifies_the_server(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with scripted(keep_alive, tls=server_tls) as (server, url):
        trusting = FastTransport(verify=ssl.create_default_context(cafile=str(cert)))
        async with httpx.AsyncClient(transport=trusting) as client:
            for _ in range(2):
                assert (await client.get(url)).text == "ok"
        assert server.connections == 1
        async with httpx.AsyncClient(transport=FastTransport()) as client:  # public CAs only
            with pytest.raises(httpx.ConnectError):
                await client.get(url)


async def test_large_body_with_back_pressure_then_reuse() -> None:
    """More than the read buffer's high-water mark: reading pauses while the consumer lags,
    resumes as it catches up, and the connection is reused afterwards."""
    size = 3 * 1024 * 1024

    async def big(server: ScriptedServer, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            writer.write(b"x" * size)
            await writer.drain()

    async with scripted(big) as (server, url):
        transport = FastTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            async with client.stream("GET", url) as response:
                received = 0
                async for piece in response.aiter_raw():
                    received += len(piece)
                    await asyncio.sleep(0)  # a consumer slower than the socket
            assert received == size
            assert len((await client.get(url)).content) == size
        assert server.connections == 1
        assert transport.connections_opened == 1


async def test_send_upstream_reads_whole_bodies_and_decodes_them() -> None:
    packed = gzip.compress(b"unpacked")

    async def gzipped(server: ScriptedServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n"
                         % len(packed) + packed)

    async with (scripted(keep_alive) as (_, plain_url), scripted(gzipped) as (_, gzip_url),
                httpx.AsyncClient(transport=FastTransport()) as client):
        plain = await send_upstream(client, client.build_request("GET", plain_url))
        assert plain.content == b"ok"
        assert plain.request.url == plain_url
        assert plain.is_stream_consumed and plain.is_closed
        packed_answer = await send_upstream(client, client.build_request("GET", gzip_url))
        assert packed_answer.content == b"unpacked"
