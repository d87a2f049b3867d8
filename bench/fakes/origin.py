"""Test kit for the upstream matrix: a private CA with a ``localhost`` server certificate
(made with the openssl CLI at test time) and a keep-alive HTTP/1.1 origin, plain or TLS,
that records request lines, bodies and the SNI name each TLS client sent."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["Certificates", "Origin", "loop_policy", "make_certificates", "origin"]


def loop_policy(name: str) -> asyncio.AbstractEventLoopPolicy:
    """``asyncio`` or ``uvloop`` (skipped when missing): for tests that run on both loops,
    since the gateway serves on uvloop and libraries often run on asyncio."""
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.EventLoopPolicy()  # type: ignore[no-any-return]
    return asyncio.DefaultEventLoopPolicy()


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the private CA (PEM): what a provider's ca_bundle would name
    cert: Path  # server certificate for DNS:localhost, signed by the CA
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_certificates(folder: Path) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make test certificates")
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr, ext = (folder / n for n in ("localhost.pem", "localhost.key", "l.csr", "l.ext"))

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=routegate test CA", "-keyout", str(ca_key), "-out", str(ca),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key),
        "-out", str(csr))
    ext.write_text("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                   "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext))
    return Certificates(ca, cert, key)


@dataclass
class Origin:
    """What the origin saw: request lines, bodies, header names, SNI names, connections."""

    port: int = 0
    lines: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    header_names: list[set[str]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    connections: int = 0
    answer: bytes = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                self.lines.append(lines[0])
                names = {line.partition(":")[0].strip().lower() for line in lines[1:] if line}
                self.header_names.append(names)
                length = next((int(line.partition(":")[2]) for line in lines[1:]
                               if line.lower().startswith("content-length:")), 0)
                self.bodies.append(await reader.readexactly(length))
                writer.write(self.answer)
                await writer.drain()
                if any(line.lower().replace(" ", "") == "connection:close" for line in lines):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def origin(tls: Certificates | None = None, answer: bytes | None = None
                 ) -> AsyncIterator[Origin]:
    """An :class:`Origin` on 127.0.0.1 (TLS with ``tls``'s localhost certificate)."""
    state = Origin()
    if answer is not None:
        state.answer = answer
    context = None
    if tls is not None:
        context = tls.server_context()
        context.sni_callback = lambda sock, name, ctx: state.sni.append(name)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
