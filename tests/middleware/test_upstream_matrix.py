"""The upstream correctness matrix for FastTransport (the only selectable transport), against
real servers on 127.0.0.1: a forward proxy (bench/fakes/forward_proxy.py), plain and TLS
origins with a private CA and a ``localhost`` certificate (bench/fakes/origin.py).

Rows: HTTP_PROXY (absolute form), HTTPS_PROXY (CONNECT + TLS inside), NO_PROXY, proxy
credentials, a provider's ``proxy`` overriding the environment, proxy errors; TLS verification
by default, SNI, ``ca_bundle``, bad certificates; response head and body caps; CR/LF/NUL in
outgoing headers. Replays are covered in test_transport.py; the gateway-level rows (config
keys, fallback on a capped answer) in test_upstream_gateway.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator

import httpx
import pytest

from bench.fakes.forward_proxy import ForwardProxy, serve_forward_proxy
from bench.fakes.origin import Certificates, loop_policy, make_certificates, origin
from routegate.middleware.upstream.origins import OriginOptions, ProxyError, ResponseTooLarge, UnsafeHeader
from routegate.middleware.upstream.transport import FastTransport, raw_chunks, send_upstream

pytestmark = pytest.mark.filterwarnings("ignore:Overriding the \"event_loop_policy\" fixture")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Both loops: the gateway serves on uvloop, and TLS-in-a-tunnel (start_tls) differs."""
    return loop_policy(request.param)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with serve_forward_proxy() as running:
        yield running


def env(**values: str) -> Callable[[str], str | None]:
    return values.get


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # bound, never listening: connecting is refused


# -- proxies -------------------------------------------------------------------------------------

async def test_http_proxy_carries_http_upstreams_in_absolute_form(proxy: ForwardProxy) -> None:
    async with origin() as server:
        transport = FastTransport(environ=env(HTTP_PROXY=proxy.url))
        async with httpx.AsyncClient(transport=transport) as client:
            url = f"http://localhost:{server.port}/v1/chat?x=1"
            answer = await client.post(url, content=b"hi")
            assert answer.text == "ok"
        assert proxy.seen == [f"POST {url}"]
        assert server.lines == ["POST /v1/chat?x=1 HTTP/1.1"]
        assert server.bodies == [b"hi"]


async def test_https_proxy_tunnels_and_verifies_tls_inside(proxy: ForwardProxy,
                                                           certs: Certificates) -> None:
    async with origin(tls=certs) as server:
        transport = FastTransport(environ=env(HTTPS_PROXY=proxy.url, HTTP_PROXY="http://127.0.0.1:1"))
        transport.configure(f"https://localhost:{server.port}", OriginOptions(ca_bundle=str(certs.ca)))
        async with httpx.AsyncClient(transport=transport) as client:
            for body in (b"one", b"two"):
                answer = await client.post(f"https://localhost:{server.port}/v1/x", content=body)
                assert answer.text == "ok"
        assert proxy.seen == [f"CONNECT localhost:{server.port}"]  # one tunnel, kept alive
        assert server.sni == ["localhost"]
        assert server.bodies == [b"one", b"two"]


async def test_no_proxy_goes_direct(proxy: ForwardProxy) -> None:
    async with origin() as server:
        for no_proxy in ("localhost", ".localhost", f"example.com, localhost:{server.port}", "*"):
            transport = FastTransport(environ=env(HTTP_PROXY=proxy.url, NO_PROXY=no_proxy))
            async with httpx.AsyncClient(transport=transport) as client:
                assert (await client.get(f"http://localhost:{server.port}/")).text == "ok"
        transport = FastTransport(environ=env(http_proxy=proxy.url, no_proxy="localhost:1"))
        async with httpx.AsyncClient(transport=transport) as client:  # other port: proxied
            assert (await client.get(f"http://localhost:{server.port}/")).text == "ok"
        assert proxy.seen == [f"GET http://localhost:{server.port}/"]


async def test_proxy_credentials_from_the_url(certs: Certificates) -> None:
    with serve_forward_proxy(credentials="alice:s3cret/") as proxy:
        url = proxy.url.replace("http://", "http://alice:s3cret%2F@")
        async with origin() as plain, origin(tls=certs) as secure:
            transport = FastTransport(environ=env(HTTP_PROXY=url, HTTPS_PROXY=url))
            transport.configure(f"https://localhost:{secure.port}",
                                OriginOptions(ca_bundle=str(certs.ca)))
            async with httpx.AsyncClient(transport=transport) as client:
                assert (await client.get(f"http://localhost:{plain.port}/")).text == "ok"
                assert (await client.get(f"https://localhost:{secure.port}/")).text == "ok"
            assert "proxy-authorization" not in plain.header_names[0]  # the proxy's, not sent on
        assert proxy.authorizations == ["Basic YWxpY2U6czNjcmV0Lw=="] * 2  # alice:s3cret/


async def test_provider_proxy_overrides_the_environment(proxy: ForwardProxy) -> None:
    async with origin() as server:
        dead = f"http://127.0.0.1:{closed_port()}"
        transport = FastTransport(environ=env(HTTP_PROXY=dead))
        transport.configure(f"http://localhost:{server.port}/v1", OriginOptions(proxy=proxy.url))
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(f"http://localhost:{server.port}/v1/models")).text == "ok"
        assert proxy.seen == [f"GET http://localhost:{server.port}/v1/models"]
        transport = FastTransport(environ=env(HTTP_PROXY=dead))
        transport.configure(f"http://localhost:{server.port}", OriginOptions(proxy="direct"))
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(f"http://localhost:{server.port}/")).text == "ok"
        assert server.connections == 2


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_https_proxy_url_speaks_tls_to_the_proxy(scheme: str, certs: Certificates) -> None:
    """``https://`` proxy: TLS to the proxy (verified like any server), then for an https
    upstream a second TLS session to the provider inside the tunnel."""
    with serve_forward_proxy(tls=certs.server_context()) as proxy:
        async with origin(tls=certs if scheme == "https" else None) as server:
            trusting = ssl.create_default_context(cafile=str(certs.ca))
            transport = FastTransport(verify=trusting, environ=env(HTTP_PROXY=proxy.url,
                                                                   HTTPS_PROXY=proxy.url))
            async with httpx.AsyncClient(transport=transport) as client:
                answer = await client.get(f"{scheme}://localhost:{server.port}/")
            assert answer.text == "ok"
        assert proxy.seen[0].startswith("CONNECT" if scheme == "https" else "GET http://")


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_refused_proxy_is_reported_as_a_proxy_error(scheme: str) -> None:
    port = closed_port()
    transport = FastTransport(environ=env(HTTP_PROXY=f"http://127.0.0.1:{port}",
                                          HTTPS_PROXY=f"http://127.0.0.1:{port}"))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ProxyError, match=f"proxy 127.0.0.1:{port} unreachable"):
            await client.get(f"{scheme}://localhost:9/")


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("user", ["", "alice:wrong@"])
async def test_proxy_demanding_credentials_is_a_407_proxy_error(scheme: str, user: str,
                                                                certs: Certificates) -> None:
    with serve_forward_proxy(credentials="alice:right") as proxy:
        async with origin(tls=certs if scheme == "https" else None) as server:
            url = proxy.url.replace("http://", "http://" + user)
            transport = FastTransport(environ=env(HTTP_PROXY=url, HTTPS_PROXY=url))
            async with httpx.AsyncClient(transport=transport) as client:
                with pytest.raises(ProxyError, match="407") as caught:
                    await client.get(f"{scheme}://localhost:{server.port}/")
            assert "right" not in str(caught.value) and "wrong" not in str(caught.value)
            assert server.connections == 0


# -- TLS -----------------------------------------------------------------------------------------

async def test_tls_verifies_by_default_and_names_the_failure(certs: Certificates) -> None:
    async with origin(tls=certs) as server, \
            httpx.AsyncClient(transport=FastTransport()) as client:  # system store + certifi
        with pytest.raises(httpx.ConnectError, match=r"certificate of localhost.*rejected.*ca_bundle"):
            await client.get(f"https://localhost:{server.port}/")


async def test_ca_bundle_trusts_a_private_ca_with_sni_by_hostname(certs: Certificates) -> None:
    async with origin(tls=certs) as server:
        transport = FastTransport()
        transport.configure(f"https://localhost:{server.port}", OriginOptions(ca_bundle=str(certs.ca)))
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(f"https://localhost:{server.port}/")).text == "ok"
        assert server.sni == ["localhost"]


async def test_certificate_for_another_name_is_rejected(certs: Certificates) -> None:
    """The certificate says localhost; the URL says 127.0.0.1: a hostname mismatch."""
    async with origin(tls=certs) as server:
        transport = FastTransport()
        transport.configure(f"https://127.0.0.1:{server.port}", OriginOptions(ca_bundle=str(certs.ca)))
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError, match=r"rejected.*(mismatch|match)"):
                await client.get(f"https://127.0.0.1:{server.port}/")


# -- limits --------------------------------------------------------------------------------------

def _answer(headers: list[bytes], body: bytes = b"ok") -> bytes:
    return (b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in headers)
            + b"content-length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize(("headers", "reason"), [
    ([b"x-big: " + b"a" * 70_000], "head exceeds 65536 bytes"),
    ([b"x-h%d: v" % i for i in range(101)], "more than 100 headers"),
])
async def test_response_head_is_capped(headers: list[bytes], reason: str) -> None:
    async with origin(answer=_answer(headers)) as server, \
            httpx.AsyncClient(transport=FastTransport()) as client:
        with pytest.raises(ResponseTooLarge, match=reason):
            await client.get(f"http://127.0.0.1:{server.port}/")


async def test_head_just_under_the_caps_passes() -> None:
    headers = [b"x-h%d: %s" % (i, b"a" * 500) for i in range(99)]
    async with origin(answer=_answer(headers)) as server, \
            httpx.AsyncClient(transport=FastTransport()) as client:
        assert (await client.get(f"http://127.0.0.1:{server.port}/")).text == "ok"


async def test_whole_body_is_capped_streams_are_not() -> None:
    body = b"x" * 5000
    async with origin(answer=_answer([], body)) as server:
        transport = FastTransport()
        url = f"http://127.0.0.1:{server.port}/"
        transport.configure(url, OriginOptions(max_body_bytes=4096))
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(ResponseTooLarge, match="body exceeds 4096 bytes"):
                await send_upstream(client, client.build_request("POST", url))
            streamed = await send_upstream(client, client.build_request("POST", url), stream=True)
            assert b"".join([piece async for piece in raw_chunks(streamed)]) == body


# -- outgoing header values ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value", "named"), [
    ("authorization", "Bearer sk-secret\n", "authorization"),
    ("x-static", "a\r\nx-injected: 1", "x-static"),
    ("x-nul", "a\0b", "x-nul"),
    ("x-bad\rname", "v", "x-bad\\rname"),
])
async def test_cr_lf_nul_in_a_header_is_refused_before_sending(name: str, value: str,
                                                                named: str) -> None:
    async with origin() as server, \
            httpx.AsyncClient(transport=FastTransport()) as client:
        request = client.build_request("POST", f"http://127.0.0.1:{server.port}/",
                                       content=b"x")
        request.headers[name] = value
        with pytest.raises(UnsafeHeader) as caught:
            await send_upstream(client, request)
        assert named in str(caught.value)
        assert "secret" not in str(caught.value) and "injected" not in str(caught.value)
        assert (await client.get(f"http://127.0.0.1:{server.port}/")).text == "ok"
        assert server.lines == ["GET / HTTP/1.1"]  # the refused request never left

