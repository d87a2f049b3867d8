"""``routegate serve`` with a chosen upstream transport, for bench/gateway_bench.py only.

The gateway ships one upstream transport (routegate's own, ``fast``); the bench compares it
with the alternatives it was chosen over, under the same server setup as ``routegate serve``
(uvloop, the coalescing httptools protocol, the same GC settings):

- ``fast``: routegate's FastTransport (middleware/upstream/transport.py), what ``routegate serve`` uses
- ``httpx``: httpx's default transport (httpcore)
- ``aiohttp``: httpx-aiohttp's AiohttpTransport
- ``pyreqwest``: pyreqwest's httpx transport (Rust: reqwest, hyper, rustls; tokio runtime)

    python -m bench.gateway_server --config gateway.toml --port 8080 --transport pyreqwest
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from datetime import timedelta

import httpx

TRANSPORTS = ("fast", "httpx", "aiohttp", "pyreqwest")
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=256, keepalive_expiry=30.0)


def build_transport(name: str) -> httpx.AsyncBaseTransport | None:
    """The named transport with the gateway's pool limits; None for the gateway's own."""
    if name == "fast":
        return None
    if name == "httpx":
        return httpx.AsyncHTTPTransport(limits=_LIMITS)
    if name == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=_LIMITS)
    if name == "pyreqwest":
        from pyreqwest.client import ClientBuilder
        from pyreqwest.compatibility.httpx import HttpxTransport

        client = (ClientBuilder().max_connections(1000).pool_max_idle_per_host(256)
                  .pool_idle_timeout(timedelta(seconds=30)).build())
        return HttpxTransport(client)
    raise ValueError(f"unknown transport {name!r}; one of {', '.join(TRANSPORTS)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=TRANSPORTS, default="fast")
    args = parser.parse_args(argv)

    import uvicorn

    from routegate.middleware.config import load_config
    from routegate.middleware.extensions import default_extensions
    from routegate.middleware.request.gateway import Gateway
    from routegate.middleware.standalone.app import create_app
    from routegate.middleware.standalone.http_protocol import CoalescingHttpToolsProtocol

    config = load_config(args.config)
    logging.basicConfig(level=logging.WARNING)
    app = create_app(config)
    transport = build_transport(args.transport)
    if transport is not None:  # the health app reads app.gateway: swapped before start
        app.gateway = Gateway(config, extensions=default_extensions(config), transport=transport)
    gc.freeze()  # as routegate serve does (middleware/standalone/cli.py)
    gc.set_threshold(20_000, 20, 20)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop",
                http=CoalescingHttpToolsProtocol, lifespan="on", log_level="warning",
                access_log=False, proxy_headers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
