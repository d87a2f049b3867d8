"""Per-origin upstream settings for :class:`~routegate.middleware.upstream.transport.FastTransport`
(and the load-time checks of the provider keys that set them):
which proxy (the environment's ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY``, or a
provider's ``proxy`` key), which trust store (the system's plus certifi's, or a provider's
``ca_bundle``), the response size caps, and opening a connection through a proxy:
absolute-form requests for ``http://`` upstreams, a CONNECT tunnel with TLS to the provider
inside it for ``https://`` ones.

The errors here are subclasses of what the relay already classifies, so a failure lands in
its fallback logic under a name that says what happened (``ProxyError`` is a connect error,
``ResponseTooLarge`` a broken answer, ``UnsafeHeader`` a request that could not be written).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from routegate.middleware.config_schema import ProviderConfig

__all__ = ["OriginOptions", "Proxy", "ProxyError", "ResponseTooLarge", "UnsafeHeader",
           "connect_error", "env_proxy", "open_tunnel", "parse_proxy", "resolve_proxy",
           "shared_origin_conflict", "unsafe_header", "unsafe_header_name", "upstream_problem"]


# A provider's upstream keys in gateway.toml (ProviderConfig): their bounds, checked at load
_BOUNDS = {"max_response_header_bytes": (1024, 1024 * 1024), "max_response_headers": (8, 1000),
           "max_response_body_bytes": (1024, 1024 * 1024 * 1024)}


def unsafe_header(text: str) -> bool:
    """CR, LF or NUL: a header carrying one could end the head early or smuggle another."""
    return "\r" in text or "\n" in text or "\0" in text


def upstream_problem(provider: ProviderConfig, key: Callable[[str], str]) -> str | None:
    """What is wrong with a provider's upstream keys as ``key.path: reason``, or None.
    Header values and proxy URLs (which may hold credentials) are never included."""
    for name, value in provider.headers.items():
        if unsafe_header(name) or unsafe_header(value):
            shown = "?" if unsafe_header(name) else key(name)
            return f"headers.{shown}: CR, LF or NUL in a header name or value"
    for field, (low, high) in _BOUNDS.items():
        if not low <= getattr(provider, field) <= high:
            return f"{field}: must be within {low}..{high}"
    if provider.proxy and provider.proxy != "direct":
        scheme, sep, rest = provider.proxy.partition("://")
        if scheme not in ("http", "https") or not sep or not rest.strip("/"):
            return 'proxy: an http:// or https:// URL, "direct" or empty (the environment)'
    if provider.ca_bundle and not Path(provider.ca_bundle).is_file():
        return f"ca_bundle: no such file {provider.ca_bundle!r}"
    return None


def shared_origin_conflict(providers: Mapping[str, ProviderConfig]) -> tuple[str, str, str] | None:
    """Connections are pooled per origin, so providers on one origin must share its settings:
    ``(provider, earlier provider, origin)`` for the first pair that does not."""
    seen: dict[str, tuple[str, tuple[object, ...]]] = {}
    for name, provider in providers.items():
        if provider.type == "local":
            continue
        scheme, _, rest = provider.base_url.partition("://")
        origin = f"{scheme}://{rest.split('/', 1)[0]}".lower()
        settings = tuple(getattr(provider, field) for field in ("proxy", "ca_bundle", *_BOUNDS))
        other = seen.setdefault(origin, (name, settings))
        if other[1] != settings:
            return name, other[0], origin
    return None


class ProxyError(httpx.ConnectError):
    """The forward proxy refused the connection, demanded credentials (407) or failed."""


class ResponseTooLarge(httpx.RemoteProtocolError):
    """The response head or a whole (non-streamed) body exceeded its cap."""


class UnsafeHeader(httpx.WriteError):
    """An outgoing header name or value holds CR, LF or NUL; the request was not sent."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """A forward proxy: where it listens and the ``Proxy-Authorization`` value, if any."""

    host: str
    port: int
    tls: bool
    authorization: bytes | None

    @property
    def origin(self) -> bytes:
        return f"{self.host}:{self.port}".encode()


@dataclass(frozen=True, slots=True)
class OriginOptions:
    """How to reach one provider origin. ``proxy``: "" for the environment, "direct" for
    none, or a URL; ``ca_bundle``: a PEM file trusted instead of the defaults."""

    proxy: str = ""
    ca_bundle: str = ""
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int = 32 * 1024 * 1024


def parse_proxy(url: str) -> Proxy:
    """``http://user:pass@host:port`` -> Proxy (credentials become Basic auth)."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a proxy must be an http:// or https:// URL with a host")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(pair)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Proxy(parts.hostname, port, parts.scheme == "https", authorization)


def env_proxy(scheme: str, host: str, port: int,
              environ: Callable[[str], str | None]) -> Proxy | None:
    """The environment's proxy for this origin (lower-case names win, as in curl), or None
    when there is none or ``NO_PROXY`` exempts the host."""
    name = "https_proxy" if scheme == "https" else "http_proxy"
    url = environ(name) or environ(name.upper()) or environ("all_proxy") or environ("ALL_PROXY")
    if not url or _bypassed(host, port, environ("no_proxy") or environ("NO_PROXY") or ""):
        return None
    return parse_proxy(url)


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """curl's NO_PROXY rules: ``*``; a domain matches itself and its subdomains (a leading
    dot is optional); an IP address or CIDR block; an optional ``:port``."""
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".").strip("[]")
        if host == name or host.endswith("." + name):
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False):
                return True
        except ValueError:
            continue
    return False


def resolve_proxy(options: OriginOptions, scheme: str, host: str, port: int,
                  environ: Callable[[str], str | None]) -> Proxy | None:
    if options.proxy == "direct":
        return None
    if options.proxy:
        return parse_proxy(options.proxy)
    return env_proxy(scheme, host, port, environ)


def unsafe_header_name(headers: list[tuple[bytes, bytes]]) -> str:
    """The first header whose name or value holds CR/LF/NUL, for an error message: the name
    with those bytes escaped; the value is never shown."""
    for name, value in headers:
        if any(c in name or c in value for c in (b"\r", b"\n", b"\0")):
            return repr(name.decode("latin-1"))[1:-1]
    return "the request line"


def connect_error(exc: BaseException, target: str) -> httpx.ConnectError:
    """A connect failure with a message that says which check failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return httpx.ConnectError(f"TLS certificate of {target} rejected: {exc.verify_message} "
                                  "(set the provider's ca_bundle to trust a private CA)")
    return httpx.ConnectError(f"{exc or type(exc).__name__} ({target})")


class _TunnelProtocol(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT, up to the end of its head."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head = b""
        self.done: asyncio.Future[bytes] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head and not self.done.done():
            self.done.set_result(self.head)
        elif len(self.head) > 16384 and not self.done.done():
            self.done.set_exception(ProxyError("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ProxyError("the proxy closed the connection during CONNECT"))


async def open_tunnel(loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int,
                      context: ssl.SSLContext | None, proxy_context: Callable[[], ssl.SSLContext],
                      protocol: asyncio.Protocol) -> asyncio.Transport:
    """A connection through ``proxy`` to ``host:port``, with ``protocol`` attached: a CONNECT
    tunnel, and TLS (SNI = ``host``) inside it when ``context`` is given. Without a context
    the connection ends at the proxy (plain HTTP goes in absolute form)."""
    where = f"proxy {proxy.host}:{proxy.port}"
    tunnel = _TunnelProtocol(loop) if context is not None else None
    try:
        transport, _ = await loop.create_connection(
            lambda: tunnel or protocol, proxy.host, proxy.port,
            ssl=proxy_context() if proxy.tls else None,
            server_hostname=proxy.host if proxy.tls else None)
    except (OSError, ssl.SSLError) as exc:
        raise ProxyError(f"{where} unreachable: {exc or type(exc).__name__}") from exc
    if tunnel is None or context is None:
        return transport
    try:
        target = f"{host}:{port}".encode()
        auth = b"Proxy-Authorization: " + proxy.authorization + b"\r\n" if proxy.authorization else b""
        transport.write(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n" + auth + b"\r\n")
        head = await tunnel.done
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise ProxyError(f"{where} answered CONNECT with {status_line[:80]!r}")
        if parts[1] == "407":
            raise ProxyError(f"{where} demands authentication (407): "
                             + ("its credentials were refused" if proxy.authorization
                                else "no credentials in the proxy URL"))
        if not parts[1].startswith("2"):
            raise ProxyError(f"{where} refused CONNECT to {host}:{port}: {status_line[:80]}")
        try:
            tls = await loop.start_tls(transport, protocol, context, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:
            raise connect_error(exc, f"{host}:{port} via {where}") from exc
        assert tls is not None
        protocol.connection_made(tls)
        return tls
    except BaseException:
        transport.close()
        raise

