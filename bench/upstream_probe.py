"""The upstream correctness matrix, probed for every candidate transport the way the gateway
wires one (``httpx.AsyncClient(transport=X)``, the environment set as a user would set it),
against the same loopback servers the tests use. Prints one row per check: what each client
did. The tests (tests/middleware/test_upstream_*.py) hold FastTransport to every row; this
shows what choosing another client would have meant.

    python -m bench.upstream_probe [--transports fast,httpx,aiohttp,pyreqwest]
"""

# ruff: noqa: BLE001  (a probe records whatever each client raises)
from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from bench.fakes.forward_proxy import serve_forward_proxy
from bench.fakes.origin import Certificates, make_certificates, origin
from bench.gateway_server import build_transport
from routegate.middleware.upstream.origins import OriginOptions
from routegate.middleware.upstream.transport import FastTransport, send_upstream

Check = Callable[[str, Certificates], Awaitable[str]]
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
               "ALL_PROXY", "all_proxy")


def _transport(name: str, ca: Path | None = None, url: str = "") -> httpx.AsyncBaseTransport:
    """The candidate as the gateway would build it; ``ca`` trusted the client's own way."""
    if name == "fast":
        fast = FastTransport()
        if ca is not None:
            fast.configure(url, OriginOptions(ca_bundle=str(ca)))
        return fast
    if ca is not None and name in ("httpx", "aiohttp"):
        context = ssl.create_default_context(cafile=str(ca))
        if name == "httpx":
            return httpx.AsyncHTTPTransport(verify=context)
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(verify=context)
    if ca is not None and name == "pyreqwest":
        from pyreqwest.client import ClientBuilder
        from pyreqwest.compatibility.httpx import HttpxTransport

        return HttpxTransport(ClientBuilder().add_root_certificate_pem(ca.read_bytes()).build())
    transport = build_transport(name)
    assert transport is not None
    return transport


async def _get(name: str, url: str, ca: Path | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=_transport(name, ca, url), timeout=5.0) as client:
        request = client.build_request("POST", url, content=b"x", headers=headers)
        return await send_upstream(client, request)


def _outcome(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:60]}".replace("|", "/").replace("\n", " ")


async def http_proxy(name: str, certs: Certificates) -> str:
    with serve_forward_proxy() as proxy:
        async with origin() as server:
            os.environ["HTTP_PROXY"] = proxy.url
            await _get(name, f"http://localhost:{server.port}/")
    return "via proxy" if proxy.seen else "ignored (direct)"


async def https_proxy(name: str, certs: Certificates) -> str:
    with serve_forward_proxy() as proxy:
        async with origin(tls=certs) as server:
            os.environ["HTTPS_PROXY"] = proxy.url
            await _get(name, f"https://localhost:{server.port}/", certs.ca)
    return "CONNECT tunnel" if any(s.startswith("CONNECT") for s in proxy.seen) else "ignored"


async def no_proxy(name: str, certs: Certificates) -> str:
    with serve_forward_proxy() as proxy:
        async with origin() as server:
            os.environ.update(HTTP_PROXY=proxy.url, NO_PROXY="localhost")
            await _get(name, f"http://localhost:{server.port}/")
    return "direct" if not proxy.seen else "proxied anyway"


async def proxy_407(name: str, certs: Certificates) -> str:
    with serve_forward_proxy(credentials="u:right") as proxy:
        async with origin(tls=certs) as server:
            os.environ["HTTPS_PROXY"] = proxy.url.replace("http://", "http://u:wrong@")
            try:
                answer = await _get(name, f"https://localhost:{server.port}/", certs.ca)
            except Exception as exc:  # what the relay would see
                return _outcome(exc)
    return f"answer {answer.status_code}" + ("" if proxy.seen else " (proxy ignored)")


async def bad_certificate(name: str, certs: Certificates) -> str:
    async with origin(tls=certs) as server:
        try:
            await _get(name, f"https://localhost:{server.port}/")
        except Exception as exc:
            return _outcome(exc)
    return "ACCEPTED"


async def private_ca(name: str, certs: Certificates) -> str:
    async with origin(tls=certs) as server:
        answer = await _get(name, f"https://localhost:{server.port}/", certs.ca)
    return f"ok, SNI {server.sni}" if answer.text == "ok" else answer.text


def _head(headers: list[bytes]) -> bytes:
    return (b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in headers)
            + b"content-length: 2\r\n\r\nok")


async def _capped(name: str, answer: bytes) -> str:
    async with origin(answer=answer) as server:
        try:
            response = await _get(name, f"http://127.0.0.1:{server.port}/")
        except Exception as exc:
            return _outcome(exc)
    return f"ACCEPTED ({len(response.headers)} headers)"


async def many_headers(name: str, certs: Certificates) -> str:
    return await _capped(name, _head([b"x-h%d: v" % i for i in range(101)]))


async def big_head(name: str, certs: Certificates) -> str:
    return await _capped(name, _head([b"x-big: " + b"a" * 70_000]))


async def huge_head(name: str, certs: Certificates) -> str:
    return await _capped(name, _head([b"x-h%d: %s" % (i, b"a" * 8000) for i in range(90)]))


async def crlf_header(name: str, certs: Certificates) -> str:
    async with origin() as server:
        try:
            await _get(name, f"http://127.0.0.1:{server.port}/",
                       headers={"authorization": "Bearer sk-x\r\nx-injected: 1"})
        except Exception as exc:
            return _outcome(exc)
    return f"SENT ({len(server.lines)} request)"


async def replay_after_write(name: str, certs: Certificates) -> str:
    """The server reads the second request on a kept-alive connection and drops it."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answer in (True, False):
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b"\r\n", 1)[0])
                await reader.readexactly(1)  # the one-byte body
                if answer:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    outcome = "answered"
    async with httpx.AsyncClient(transport=_transport(name), timeout=5.0) as client:
        await client.post(url, content=b"1")
        try:
            await client.post(url, content=b"2")
        except Exception as exc:
            outcome = type(exc).__name__
    server.close()
    return f"{outcome}; server saw the request {len(seen) - 1}x"


CHECKS: dict[str, Check] = {
    "HTTP_PROXY (absolute form)": http_proxy, "HTTPS_PROXY (CONNECT + TLS)": https_proxy,
    "NO_PROXY": no_proxy, "proxy 407 (wrong credentials)": proxy_407,
    "unknown CA (verify on)": bad_certificate, "private CA trusted": private_ca,
    "101 response headers": many_headers, "one 70 KB header": big_head,
    "720 KB response head": huge_head, "CR/LF in a header value": crlf_header,
    "request written, then dropped": replay_after_write,
}


async def probe(names: list[str]) -> None:
    certs = make_certificates(Path(tempfile.mkdtemp()))
    print("| check | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label, check in CHECKS.items():
        cells = []
        for name in names:
            saved = {k: os.environ.pop(k) for k in _PROXY_VARS if k in os.environ}
            try:
                cells.append(await asyncio.wait_for(check(name, certs), 20))
            except Exception as exc:
                cells.append("probe failed: " + _outcome(exc))
            finally:
                for key in _PROXY_VARS:
                    os.environ.pop(key, None)
                os.environ.update(saved)
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transports", default="fast,httpx,aiohttp,pyreqwest")
    asyncio.run(probe(parser.parse_args(argv).transports.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
